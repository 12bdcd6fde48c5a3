# cython: language_level=3, boundscheck=False, wraparound=False, initializedcheck=False, cdivision=True
"""River's running statistics over a batch, in River's own order and arithmetic.

Each function is the loop River runs one example at a time (``stats.Mean.update``,
``stats.Var.update``, the metrics' ``_eval``), over arrays, compiled with the same
exact-floating-point flags as the linear kernels (setup.py): two roundings where Python
rounds twice, libm ``log`` and ``pow`` where Python calls them. Callers pass River's
state in and write the result back (:meth:`eddy.models.metrics.MetricSet.update_many`).
"""

from libc.math cimport fabs, log, pow

cdef double _LOW = 1e-15
cdef double _HIGH = 1.0 - 1e-15


cdef inline double _clamp(double x) noexcept:
    # River's utils.math.clamp: max(min(x, maximum), minimum), with Python's min and max
    # (the first argument unless the second is strictly smaller / larger).
    if _HIGH < x:
        x = _HIGH
    if _LOW > x:
        x = _LOW
    return x


def mean_abs_error(double n, double m, const double[::1] ys, const double[::1] ps):
    """``(n, mean)`` after MAE's updates: the mean of ``abs(y - p)``."""
    cdef Py_ssize_t i
    cdef double w = 1.0
    for i in range(ys.shape[0]):
        n += w
        m += (w / n) * (fabs(ys[i] - ps[i]) - m)
    return n, m


def mean_squared_error(double n, double m, const double[::1] ys, const double[::1] ps, double two):
    """``(n, mean)`` after MSE's updates: the mean of ``(y - p) ** 2`` (libm ``pow``;
    ``two`` is 2.0, passed at run time so the compiler cannot turn pow into a product)."""
    cdef Py_ssize_t i
    cdef double w = 1.0
    for i in range(ys.shape[0]):
        n += w
        m += (w / n) * (pow(ys[i] - ps[i], two) - m)
    return n, m


def variance(double n, double m, double s, const double[::1] xs):
    """``(n, mean, S)`` after ``stats.Var.update(x)`` for each x (Welford, River's order)."""
    cdef Py_ssize_t i
    cdef double w = 1.0, old, x
    for i in range(xs.shape[0]):
        x = xs[i]
        old = m
        n += w
        m += (w / n) * (x - m)
        s += w * (x - old) * (x - m)
    return n, m, s


def residual_sum(double total, const double[::1] ys, const double[::1] ps):
    """R2's residual sum of squares after its updates: ``+= (y - p) * (y - p) * w``."""
    cdef Py_ssize_t i
    cdef double w = 1.0, e
    for i in range(ys.shape[0]):
        e = ys[i] - ps[i]
        total += e * e * w
    return total


def mean_log_loss(double n, double m, const double[::1] p_true, const unsigned char[::1] y):
    """``(n, mean)`` after LogLoss's updates: ``-log(p)`` for a true label, else
    ``-log(1 - p)``, ``p`` clamped to [1e-15, 1 - 1e-15]."""
    cdef Py_ssize_t i
    cdef double w = 1.0, p, x
    for i in range(p_true.shape[0]):
        p = _clamp(p_true[i])
        x = -log(p) if y[i] else -log(1.0 - p)
        n += w
        m += (w / n) * (x - m)
    return n, m


def mean_cross_entropy(double n, double m, const double[::1] p_true, const unsigned char[::1] has):
    """``(n, mean)`` after CrossEntropy's updates: ``-log(p)`` of the true class (clamped),
    0 when the prediction gives the true class no probability."""
    cdef Py_ssize_t i
    cdef double w = 1.0, x
    for i in range(p_true.shape[0]):
        x = -log(_clamp(p_true[i])) if has[i] else 0.0
        n += w
        m += (w / n) * (x - m)
    return n, m
