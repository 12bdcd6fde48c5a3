# cython: language_level=3, boundscheck=False, wraparound=False, cdivision=True
# cython: initializedcheck=False, nonecheck=False, infer_types=False
"""The compiled loop behind :mod:`eddy.models.kernels.linear`.

Everything here reproduces River 0.26's arithmetic operation by operation, in River's
order; linear.py explains the rules and owns the Python side (recognition, names, labels,
sync with the River object). This module knows slots (integer feature ids), classes
(integer label ids) and pairs (integer (text feature, category) ids), never names.

Floating point: the module is compiled with -O2 -fno-fast-math -ffp-contract=off
(setup.py). ``pow`` is always called with an exponent read from memory at run time
(``self.half``, ``self.two``) so that the compiler cannot turn ``pow(x, 2.0)`` into
``x * x`` or ``pow(x, 0.5)`` into ``sqrt(x)``: Python's ``**`` calls libm ``pow``, and
glibc's ``pow`` differs from both in the last bit for some inputs.
"""

from libc.math cimport exp, fabs, isfinite, isnan, pow
from libc.stdint cimport int8_t, int32_t, int64_t, uint8_t
from libc.stdlib cimport free, malloc, realloc
from libc.string cimport memcpy

cdef extern from *:
    """
    #ifdef __FAST_MATH__
    #define EDDY_FAST_MATH 1
    #else
    #define EDDY_FAST_MATH 0
    #endif
    #ifdef __FP_FAST_FMA
    #define EDDY_FP_FAST_FMA 1
    #else
    #define EDDY_FP_FAST_FMA 0
    #endif
    #ifndef EDDY_KERNEL_CFLAGS
    #define EDDY_KERNEL_CFLAGS "unknown (built without setup.py)"
    #endif
    """
    int EDDY_FAST_MATH
    int EDDY_FP_FAST_FMA
    const char* EDDY_KERNEL_CFLAGS

FAST_MATH = bool(EDDY_FAST_MATH)
FP_FAST_FMA = bool(EDDY_FP_FAST_FMA)
CFLAGS = EDDY_KERNEL_CFLAGS.decode()

# Op codes (linear.py exposes PREDICT and LEARN); OP_BAD is a learn op whose label River
# would reject, so the loop stops there and the caller lets River raise. STOP_* are the
# reasons the loop stops; a learn op's own prediction is recomputed only when the sum of
# |w * x| reaches SAFE_BOUND (below it, no partial sum can overflow).
cdef enum:
    OP_PREDICT = 0
    OP_LEARN = 1
    OP_BAD = 2
    FAM_LOG = 0
    FAM_SQUARED = 1
    FAM_SOFTMAX = 2
    OPT_SGD = 0
    OPT_ADAM = 1
    SCHED_CONSTANT = 0
    SCHED_INVERSE = 1
    SCHED_OPTIMAL = 2
    FLAG_NUMERIC = 1
    FLAG_DUMMY = 2
    STOP_NONE = 0
    STOP_NON_FINITE = 1
    STOP_UNSUPPORTED = 2

cdef double SAFE_BOUND = 1e300








# -- Python's sum() over floats (SoftmaxRegression's utils.math.dot) ------------------------

cdef struct SumAcc:
    double f
    double c
    int started


cdef inline void sum_init(SumAcc* s) noexcept nogil:
    s.f = 0.0
    s.c = 0.0
    s.started = 0


cdef inline void sum_add(SumAcc* s, double x, int compensated) noexcept nogil:
    cdef double t
    if not s.started:
        # sum() starts from int 0: the first float becomes 0 + x.
        s.f = 0.0 + x
        s.started = 1
        return
    if not compensated:
        s.f = s.f + x
        return
    t = s.f + x
    if fabs(s.f) >= fabs(x):
        s.c += (s.f - t) + x
    else:
        s.c += (x - t) + s.f
    s.f = t


cdef inline double sum_result(SumAcc* s, int compensated) noexcept nogil:
    if compensated and s.c != 0.0 and isfinite(s.c):
        return s.f + s.c
    return s.f


# -- probes (tests/unit/test_kernels.py): compiled with the same flags as the loop --------


def probe_muladd(double a, double b, double c) -> float:
    """``a * b + c`` as this module computes it (two roundings unless FMA contraction)."""
    return a * b + c


def probe_sum(double[::1] xs) -> float:
    """Left-to-right sum, as River's loops add (a reassociating build differs)."""
    cdef double acc = 0.0
    cdef Py_ssize_t i
    for i in range(xs.shape[0]):
        acc = acc + xs[i]
    return acc


def probe_pow(double x, double y) -> float:
    """libm ``pow`` with a run-time exponent, as the loop calls it."""
    return pow(x, y)


def probe_exp(double x) -> float:
    """libm ``exp``, as the loop calls it."""
    return exp(x)


def probe_python_sum(double[::1] xs, int compensated) -> float:
    """``sum()`` of floats as this interpreter's ``builtins.sum`` computes it: plain
    left-to-right (CPython 3.11) or Neumaier-compensated (3.12+)."""
    cdef SumAcc s
    sum_init(&s)
    cdef Py_ssize_t i
    for i in range(xs.shape[0]):
        sum_add(&s, xs[i], compensated)
    return sum_result(&s, compensated)


# -- schedulers ------------------------------------------------------------------------------

cdef struct Sched:
    int kind
    double a  # Constant: learning_rate; InverseScaling: learning_rate; Optimal: alpha
    double b  # InverseScaling: power; Optimal: t0


cdef inline double sched_get(const Sched* s, int64_t t) noexcept nogil:
    if s.kind == SCHED_CONSTANT:
        return s.a
    if s.kind == SCHED_INVERSE:
        # learning_rate / math.pow(t + 1, power)
        return s.a / pow(<double>(t + 1), s.b)
    # 1.0 / (alpha * (t0 + t))
    return 1.0 / (s.a * (s.b + <double>t))


# -- one part of the rows (one FeatureColumns) -----------------------------------------------

cdef struct Part:
    const double* values
    const uint8_t* present
    const int32_t* order
    int64_t ncols
    const int32_t* colslot
    const int64_t* tptr   # NULL when the part has no text; else per row, into tpair/tslot
    const int32_t* tpair  # (text feature, category) pair ids, in the row's key order
    const int32_t* tslot  # the dummy f"{name}_{category}" of each, as a slot


cdef void* grow(void* p, size_t elsize, Py_ssize_t n) noexcept nogil:
    return realloc(p, elsize * (n if n > 0 else 1))


cdef class Kernel:
    """The numeric state of one recognised River model and the loop over ops.

    Absent weights are stored as 0.0 (River reads a missing key as 0), absent scaler
    statistics as 0 / 0.0 (defaultdict(float)); the ``*seq`` arrays say whether a key
    exists in the matching River dict (``-1``: absent) and in which order the keys
    were inserted (smaller first).
    """

    # configuration
    cdef public int family, opt, has_scaler, with_std, has_onehot, dummies_first, compensated
    cdef Sched lr
    cdef Sched ilr
    cdef public double l2, clip, nclip, init, b1, b2, omb1, omb2, eps, pmin, pmax
    cdef public double half, two
    # slots
    cdef public Py_ssize_t cap
    cdef uint8_t* flags
    cdef double* w
    cdef double* m
    cdef double* v
    cdef int64_t* wseq
    cdef int64_t* cnt
    cdef double* mean
    cdef double* var
    cdef double* sd  # pow(var, 0.5), refreshed whenever var changes
    cdef int64_t* cseq
    cdef int64_t* meanseq
    cdef int64_t* vseq
    cdef int32_t* kpos
    cdef int64_t* mark
    cdef double* xval
    cdef int32_t* K
    cdef public Py_ssize_t nK
    cdef public Py_ssize_t kptr  # GLM: every K[:kptr] has a weight
    # GLM scalars
    cdef public double intercept
    cdef public int64_t n_iter
    # softmax classes
    cdef public Py_ssize_t nC, ccap
    cdef double** cw
    cdef double** cm
    cdef double** cv
    cdef int32_t** cpos
    cdef int32_t** cord
    cdef int64_t* clen
    cdef int64_t* citer
    cdef int64_t* ckptr
    # one-hot pairs
    cdef public Py_ssize_t pcap
    cdef uint8_t* pair_learned
    cdef int32_t* pair_log
    cdef public Py_ssize_t npairlog
    cdef Py_ssize_t pair_log_cap
    # sequence numbers and stamps
    cdef public int64_t seq
    cdef int64_t stamp
    # per-op scratch (cap-sized)
    cdef int32_t* num_slot
    cdef double* num_raw
    cdef double* num_xt
    cdef int32_t* dum
    cdef int32_t* xs_slot
    cdef double* xs_val
    cdef int32_t* xf_slot
    cdef double* xf_val
    cdef double* cp
    cdef double* cbound
    # the current row
    cdef Py_ssize_t nn   # numbers in the current row
    cdef Py_ssize_t nd   # distinct dummies in the current row
    cdef Py_ssize_t npr  # pairs in the current row
    cdef const int32_t* rpairs
    cdef const int32_t* rslots
    # undo logs
    cdef double** ud_ptr
    cdef double* ud_old
    cdef Py_ssize_t nud, ud_cap
    cdef int64_t** ui_ptr
    cdef int64_t* ui_old
    cdef Py_ssize_t nui, ui_cap
    cdef int32_t** uj_ptr
    cdef int32_t* uj_old
    cdef Py_ssize_t nuj, uj_cap

    def __cinit__(self):
        self.cap = 0
        self.ccap = 0
        self.pcap = 0
        self.nC = 0
        self.nK = 0
        self.kptr = 0
        self.seq = 0
        self.stamp = 0
        self.half = 0.5
        self.two = 2.0

    def __dealloc__(self):
        cdef Py_ssize_t c
        for c in range(self.ccap):
            free(self.cw[c])
            free(self.cm[c])
            free(self.cv[c])
            free(self.cpos[c])
            free(self.cord[c])
        free(self.cw)
        free(self.cm)
        free(self.cv)
        free(self.cpos)
        free(self.cord)
        free(self.clen)
        free(self.citer)
        free(self.ckptr)
        free(self.flags)
        free(self.w)
        free(self.m)
        free(self.v)
        free(self.wseq)
        free(self.cnt)
        free(self.mean)
        free(self.var)
        free(self.sd)
        free(self.cseq)
        free(self.meanseq)
        free(self.vseq)
        free(self.kpos)
        free(self.mark)
        free(self.xval)
        free(self.K)
        free(self.num_slot)
        free(self.num_raw)
        free(self.num_xt)
        free(self.dum)
        free(self.xs_slot)
        free(self.xs_val)
        free(self.xf_slot)
        free(self.xf_val)
        free(self.cp)
        free(self.cbound)
        free(self.pair_learned)
        free(self.pair_log)
        free(self.ud_ptr)
        free(self.ud_old)
        free(self.ui_ptr)
        free(self.ui_old)
        free(self.uj_ptr)
        free(self.uj_old)

    def configure(self, int family, int opt, int has_scaler, int with_std, int has_onehot,
                  int dummies_first, int compensated, lr, ilr, double l2, double clip,
                  double init, double b1, double b2, double eps):
        """Hyperparameters (linear.py reads them from the River object). ``lr`` and
        ``ilr`` are (kind, a, b) scheduler triples."""
        self.family = family
        self.opt = opt
        self.has_scaler = has_scaler
        self.with_std = with_std
        self.has_onehot = has_onehot
        self.dummies_first = dummies_first
        self.compensated = compensated
        self.lr.kind, self.lr.a, self.lr.b = lr
        self.ilr.kind, self.ilr.a, self.ilr.b = ilr
        self.l2 = l2
        self.clip = clip
        self.nclip = -clip
        self.init = init
        self.b1 = b1
        self.b2 = b2
        self.omb1 = 1.0 - b1
        self.omb2 = 1.0 - b2
        self.eps = eps
        # clamp_proba: max(min(p, 1 - 1e-15), 1e-15)
        self.pmin = 1e-15
        self.pmax = 1.0 - 1e-15

    # -- capacity ----------------------------------------------------------------------------

    def ensure_slots(self, Py_ssize_t n):
        """Room for ``n`` slots (new ones absent everywhere)."""
        if n <= self.cap:
            return
        cdef Py_ssize_t new = max(n, 2 * self.cap, 16)
        cdef Py_ssize_t old = self.cap
        cdef Py_ssize_t i, c
        self.flags = <uint8_t*>grow(self.flags, sizeof(uint8_t), new)
        self.w = <double*>grow(self.w, sizeof(double), new)
        self.m = <double*>grow(self.m, sizeof(double), new)
        self.v = <double*>grow(self.v, sizeof(double), new)
        self.wseq = <int64_t*>grow(self.wseq, sizeof(int64_t), new)
        self.cnt = <int64_t*>grow(self.cnt, sizeof(int64_t), new)
        self.mean = <double*>grow(self.mean, sizeof(double), new)
        self.var = <double*>grow(self.var, sizeof(double), new)
        self.sd = <double*>grow(self.sd, sizeof(double), new)
        self.cseq = <int64_t*>grow(self.cseq, sizeof(int64_t), new)
        self.meanseq = <int64_t*>grow(self.meanseq, sizeof(int64_t), new)
        self.vseq = <int64_t*>grow(self.vseq, sizeof(int64_t), new)
        self.kpos = <int32_t*>grow(self.kpos, sizeof(int32_t), new)
        self.mark = <int64_t*>grow(self.mark, sizeof(int64_t), new)
        self.xval = <double*>grow(self.xval, sizeof(double), new)
        self.K = <int32_t*>grow(self.K, sizeof(int32_t), new)
        self.num_slot = <int32_t*>grow(self.num_slot, sizeof(int32_t), new)
        self.num_raw = <double*>grow(self.num_raw, sizeof(double), new)
        self.num_xt = <double*>grow(self.num_xt, sizeof(double), new)
        self.dum = <int32_t*>grow(self.dum, sizeof(int32_t), new)
        self.xs_slot = <int32_t*>grow(self.xs_slot, sizeof(int32_t), new)
        self.xs_val = <double*>grow(self.xs_val, sizeof(double), new)
        self.xf_slot = <int32_t*>grow(self.xf_slot, sizeof(int32_t), new)
        self.xf_val = <double*>grow(self.xf_val, sizeof(double), new)
        if (self.flags == NULL or self.w == NULL or self.m == NULL or self.v == NULL
                or self.wseq == NULL or self.cnt == NULL or self.mean == NULL
                or self.var == NULL or self.sd == NULL or self.cseq == NULL or self.meanseq == NULL
                or self.vseq == NULL or self.kpos == NULL or self.mark == NULL
                or self.xval == NULL or self.K == NULL or self.num_slot == NULL
                or self.num_raw == NULL or self.num_xt == NULL or self.dum == NULL
                or self.xs_slot == NULL or self.xs_val == NULL or self.xf_slot == NULL
                or self.xf_val == NULL):
            raise MemoryError()
        for i in range(old, new):
            self.flags[i] = 0
            self.w[i] = 0.0
            self.m[i] = 0.0
            self.v[i] = 0.0
            self.wseq[i] = -1
            self.cnt[i] = 0
            self.mean[i] = 0.0
            self.var[i] = 0.0
            self.sd[i] = 0.0
            self.cseq[i] = -1
            self.meanseq[i] = -1
            self.vseq[i] = -1
            self.kpos[i] = -1
            self.mark[i] = 0
            self.xval[i] = 0.0
        for c in range(self.ccap):
            self._grow_class(c, old, new)
        self.cap = new

    cdef _grow_class(self, Py_ssize_t c, Py_ssize_t old, Py_ssize_t new):
        cdef Py_ssize_t i
        self.cw[c] = <double*>grow(self.cw[c], sizeof(double), new)
        self.cm[c] = <double*>grow(self.cm[c], sizeof(double), new)
        self.cv[c] = <double*>grow(self.cv[c], sizeof(double), new)
        self.cpos[c] = <int32_t*>grow(self.cpos[c], sizeof(int32_t), new)
        self.cord[c] = <int32_t*>grow(self.cord[c], sizeof(int32_t), new)
        if (self.cw[c] == NULL or self.cm[c] == NULL or self.cv[c] == NULL
                or self.cpos[c] == NULL or self.cord[c] == NULL):
            raise MemoryError()
        for i in range(old, new):
            self.cw[c][i] = 0.0
            self.cm[c][i] = 0.0
            self.cv[c][i] = 0.0
            self.cpos[c][i] = -1

    def ensure_classes(self, Py_ssize_t n):
        """Room for ``n`` classes (new ones without weights, never stepped)."""
        if n <= self.ccap:
            return
        cdef Py_ssize_t new = max(n, 2 * self.ccap, 4)
        cdef Py_ssize_t c
        self.cw = <double**>grow(self.cw, sizeof(double*), new)
        self.cm = <double**>grow(self.cm, sizeof(double*), new)
        self.cv = <double**>grow(self.cv, sizeof(double*), new)
        self.cpos = <int32_t**>grow(self.cpos, sizeof(int32_t*), new)
        self.cord = <int32_t**>grow(self.cord, sizeof(int32_t*), new)
        self.clen = <int64_t*>grow(self.clen, sizeof(int64_t), new)
        self.citer = <int64_t*>grow(self.citer, sizeof(int64_t), new)
        self.ckptr = <int64_t*>grow(self.ckptr, sizeof(int64_t), new)
        self.cp = <double*>grow(self.cp, sizeof(double), new + 1)
        self.cbound = <double*>grow(self.cbound, sizeof(double), new + 1)
        if (self.cw == NULL or self.cm == NULL or self.cv == NULL or self.cpos == NULL
                or self.cord == NULL or self.clen == NULL or self.citer == NULL
                or self.ckptr == NULL or self.cp == NULL or self.cbound == NULL):
            raise MemoryError()
        for c in range(self.ccap, new):
            self.cw[c] = NULL
            self.cm[c] = NULL
            self.cv[c] = NULL
            self.cpos[c] = NULL
            self.cord[c] = NULL
            self.clen[c] = 0
            self.citer[c] = 0
            self.ckptr[c] = 0
            self._grow_class(c, 0, self.cap)
        self.ccap = new

    def ensure_pairs(self, Py_ssize_t n):
        """Room for ``n`` (text feature, category) pairs."""
        cdef Py_ssize_t i
        if n > self.pcap:
            new = max(n, 2 * self.pcap, 16)
            self.pair_learned = <uint8_t*>grow(self.pair_learned, sizeof(uint8_t), new)
            if self.pair_learned == NULL:
                raise MemoryError()
            for i in range(self.pcap, new):
                self.pair_learned[i] = 0
            self.pcap = new
        if self.pair_log_cap < self.pcap:
            self.pair_log = <int32_t*>grow(self.pair_log, sizeof(int32_t), self.pcap)
            if self.pair_log == NULL:
                raise MemoryError()
            self.pair_log_cap = self.pcap

    def set_pair(self, Py_ssize_t pair, bint learned):
        """``learned``: the encoder already knows pair ``pair``'s category."""
        self.pair_learned[pair] = learned

    def set_flags(self, Py_ssize_t slot, int flags):
        """OR ``flags`` (1: a number somewhere, 2: a one-hot dummy) into ``slot``'s."""
        self.flags[slot] |= <uint8_t>flags

    cdef int _ensure_undo(self, Py_ssize_t nd, Py_ssize_t ni, Py_ssize_t nj) noexcept nogil:
        cdef Py_ssize_t new
        if self.nud + nd > self.ud_cap:
            new = max(self.nud + nd, 2 * self.ud_cap, 64)
            self.ud_ptr = <double**>grow(self.ud_ptr, sizeof(double*), new)
            self.ud_old = <double*>grow(self.ud_old, sizeof(double), new)
            if self.ud_ptr == NULL or self.ud_old == NULL:
                return -1
            self.ud_cap = new
        if self.nui + ni > self.ui_cap:
            new = max(self.nui + ni, 2 * self.ui_cap, 64)
            self.ui_ptr = <int64_t**>grow(self.ui_ptr, sizeof(int64_t*), new)
            self.ui_old = <int64_t*>grow(self.ui_old, sizeof(int64_t), new)
            if self.ui_ptr == NULL or self.ui_old == NULL:
                return -1
            self.ui_cap = new
        if self.nuj + nj > self.uj_cap:
            new = max(self.nuj + nj, 2 * self.uj_cap, 64)
            self.uj_ptr = <int32_t**>grow(self.uj_ptr, sizeof(int32_t*), new)
            self.uj_old = <int32_t*>grow(self.uj_old, sizeof(int32_t), new)
            if self.uj_ptr == NULL or self.uj_old == NULL:
                return -1
            self.uj_cap = new
        return 0

    cdef inline void _setd(self, double* p, double value) noexcept nogil:
        self.ud_ptr[self.nud] = p
        self.ud_old[self.nud] = p[0]
        self.nud += 1
        p[0] = value

    cdef inline void _seti(self, int64_t* p, int64_t value) noexcept nogil:
        self.ui_ptr[self.nui] = p
        self.ui_old[self.nui] = p[0]
        self.nui += 1
        p[0] = value

    cdef inline void _setj(self, int32_t* p, int32_t value) noexcept nogil:
        self.uj_ptr[self.nuj] = p
        self.uj_old[self.nuj] = p[0]
        self.nuj += 1
        p[0] = value

    cdef void _undo(self) noexcept nogil:
        cdef Py_ssize_t i
        i = self.nud - 1
        while i >= 0:
            self.ud_ptr[i][0] = self.ud_old[i]
            i -= 1
        i = self.nui - 1
        while i >= 0:
            self.ui_ptr[i][0] = self.ui_old[i]
            i -= 1
        i = self.nuj - 1
        while i >= 0:
            self.uj_ptr[i][0] = self.uj_old[i]
            i -= 1
        self.nud = 0
        self.nui = 0
        self.nuj = 0

    cdef inline void _forget(self) noexcept nogil:
        self.nud = 0
        self.nui = 0
        self.nuj = 0

    # -- state in and out (linear.py's sync/reload) --------------------------------------------

    def reset(self):
        """Forget every learned number (before a reload); slot flags describe names and
        stay."""
        cdef Py_ssize_t i, c
        for i in range(self.cap):
            self.w[i] = 0.0
            self.m[i] = 0.0
            self.v[i] = 0.0
            self.wseq[i] = -1
            self.cnt[i] = 0
            self.mean[i] = 0.0
            self.var[i] = 0.0
            self.sd[i] = 0.0
            self.cseq[i] = -1
            self.meanseq[i] = -1
            self.vseq[i] = -1
            self.kpos[i] = -1
            self.mark[i] = 0
        for c in range(self.ccap):
            for i in range(self.cap):
                self.cw[c][i] = 0.0
                self.cm[c][i] = 0.0
                self.cv[c][i] = 0.0
                self.cpos[c][i] = -1
            self.clen[c] = 0
            self.citer[c] = 0
            self.ckptr[c] = 0
        for i in range(self.pcap):
            self.pair_learned[i] = 0
        self.nK = 0
        self.kptr = 0
        self.nC = 0
        self.npairlog = 0
        self.seq = 0
        self.stamp = 0
        self.intercept = 0.0
        self.n_iter = 0

    def load_weights(self, int32_t[::1] slots, double[::1] w, double[::1] m, double[::1] v):
        """GLM weights (and Adam moments) in River's key order."""
        cdef Py_ssize_t i, s
        for i in range(slots.shape[0]):
            s = slots[i]
            self.w[s] = w[i]
            self.m[s] = m[i]
            self.v[s] = v[i]
            self.wseq[s] = self.seq
            self.seq += 1

    def load_scaler(self, int32_t[::1] cslots, int64_t[::1] counts,
                    int32_t[::1] mslots, double[::1] means,
                    int32_t[::1] vslots, double[::1] vars_):
        """StandardScaler's counts, means and vars, each in its dict's key order."""
        cdef Py_ssize_t i, s
        for i in range(cslots.shape[0]):
            s = cslots[i]
            self.cnt[s] = counts[i]
            self.cseq[s] = self.seq
            self.seq += 1
        for i in range(mslots.shape[0]):
            s = mslots[i]
            self.mean[s] = means[i]
            self.meanseq[s] = self.seq
            self.seq += 1
        for i in range(vslots.shape[0]):
            s = vslots[i]
            self.var[s] = vars_[i]
            self.sd[s] = pow(vars_[i], self.half)
            self.vseq[s] = self.seq
            self.seq += 1

    def load_known(self, int32_t[::1] slots):
        """OneHotEncoder's known dummies (its zero dict), in order."""
        cdef Py_ssize_t i
        for i in range(slots.shape[0]):
            self.kpos[slots[i]] = <int32_t>self.nK
            self.K[self.nK] = slots[i]
            self.nK += 1

    def load_class(self, Py_ssize_t c, int32_t[::1] slots, double[::1] w, double[::1] m,
                   double[::1] v, int64_t n_iter):
        """Softmax class ``c`` (the next one): its weights in River's key order."""
        cdef Py_ssize_t i, s
        assert c == self.nC
        for i in range(slots.shape[0]):
            s = slots[i]
            self.cw[c][s] = w[i]
            self.cm[c][s] = m[i]
            self.cv[c][s] = v[i]
            self.cpos[c][s] = <int32_t>i
            self.cord[c][i] = <int32_t>s
        self.clen[c] = slots.shape[0]
        self.citer[c] = n_iter
        self.nC += 1

    def finish_load(self):
        """Derive the bookkeeping pointers after the loads."""
        cdef Py_ssize_t i, c
        self.kptr = 0
        while self.kptr < self.nK and self.wseq[self.K[self.kptr]] >= 0:
            self.kptr += 1
        for c in range(self.nC):
            self.ckptr[c] = 0
            while self.ckptr[c] < self.nK and self.cpos[c][self.K[self.ckptr[c]]] >= 0:
                self.ckptr[c] += 1

    def _sorted_by(self, int which):
        cdef list out = []
        cdef Py_ssize_t i
        cdef int64_t* seqs
        if which == 0:
            seqs = self.wseq
        elif which == 1:
            seqs = self.cseq
        elif which == 2:
            seqs = self.meanseq
        else:
            seqs = self.vseq
        for i in range(self.cap):
            if seqs[i] >= 0:
                out.append((seqs[i], i))
        out.sort()
        return [s for _, s in out]

    def weights(self):
        """GLM: (slots in River's key order, weights, m, v)."""
        slots = self._sorted_by(0)
        cdef Py_ssize_t s
        return (slots, [self.w[s] for s in slots], [self.m[s] for s in slots],
                [self.v[s] for s in slots])

    def scaler(self):
        """(counts slots, counts), (means slots, means), (vars slots, vars)."""
        cdef Py_ssize_t s
        cs = self._sorted_by(1)
        ms = self._sorted_by(2)
        vs = self._sorted_by(3)
        return ((cs, [self.cnt[s] for s in cs]), (ms, [self.mean[s] for s in ms]),
                (vs, [self.var[s] for s in vs]))

    def known(self, Py_ssize_t start=0):
        """One-hot dummies known, from position ``start`` on."""
        cdef Py_ssize_t i
        return [self.K[i] for i in range(start, self.nK)]

    def pairs_learned(self, Py_ssize_t start=0):
        """Pairs the encoder learned (first time), in order, from ``start`` on."""
        cdef Py_ssize_t i
        return [self.pair_log[i] for i in range(start, self.npairlog)]

    def klass(self, Py_ssize_t c):
        """Softmax class ``c``: (slots in River's key order, weights, m, v, n_iterations)."""
        cdef Py_ssize_t i, s
        slots = [self.cord[c][i] for i in range(self.clen[c])]
        return (slots, [self.cw[c][s] for s in slots], [self.cm[c][s] for s in slots],
                [self.cv[c][s] for s in slots], self.citer[c])

    def all_finite(self):
        """Whether every stored number is finite (River's state must be, to compile)."""
        cdef Py_ssize_t i, c
        if not isfinite(self.intercept):
            return False
        for i in range(self.cap):
            if not (isfinite(self.w[i]) and isfinite(self.m[i]) and isfinite(self.v[i])
                    and isfinite(self.mean[i]) and isfinite(self.var[i])):
                return False
        for c in range(self.nC):
            for i in range(self.cap):
                if not (isfinite(self.cw[c][i]) and isfinite(self.cm[c][i])
                        and isfinite(self.cv[c][i])):
                    return False
        return True

    # -- the loop ------------------------------------------------------------------------------

    def run(self, const int8_t[::1] ops, const int64_t[::1] rows, const int32_t[::1] parts,
            list part_arrays, const double[::1] ya, const double[::1] yb,
            const int32_t[::1] yc, int64_t[::1] out_op, double[::1] out_val,
            double[:, ::1] out_p, int32_t[::1] out_nk):
        """Run ``ops`` in order; returns (ops done, stop reason, predictions written).

        ``rows[i]`` is op i's row within part ``parts[i]``; ``part_arrays`` holds, per part,
        (values, present as uint8, order or None, colslot, tptr, tpair, tslot; the last
        three None when the part has no text, tpair and tslot None for a model without
        the one-hot encoder).
        Labels: binary ``ya`` = River's signed label (-1, or int(y)), ``yb`` = the loss
        weight of that label; regression ``ya`` = y; multiclass ``yc`` = class id.
        """
        cdef Py_ssize_t n = ops.shape[0]
        cdef Py_ssize_t np_ = len(part_arrays)
        cdef Part* P = <Part*>malloc(sizeof(Part) * (np_ if np_ > 0 else 1))
        if P == NULL:
            raise MemoryError()
        cdef list keep = []
        cdef const double[:, ::1] mv_values
        cdef const uint8_t[:, ::1] mv_present
        cdef const int32_t[:, ::1] mv_order
        cdef const int32_t[::1] mv_colslot
        cdef const int64_t[::1] mv_tptr
        cdef const int32_t[::1] mv_tpair
        cdef Py_ssize_t p
        try:
            for p in range(np_):
                values, present, order, colslot, tptr, tpair, tslot = part_arrays[p]
                mv_values = values
                mv_present = present
                mv_colslot = colslot
                keep.extend((mv_values, mv_present, mv_colslot))
                P[p].ncols = mv_values.shape[1]
                if mv_values.shape[0] > 0 and mv_values.shape[1] > 0:
                    P[p].values = &mv_values[0, 0]
                    P[p].present = &mv_present[0, 0]
                    P[p].colslot = &mv_colslot[0]
                else:
                    P[p].values = NULL
                    P[p].present = NULL
                    P[p].colslot = NULL
                    P[p].ncols = 0
                P[p].order = NULL
                if order is not None and P[p].ncols > 0:
                    mv_order = order
                    keep.append(mv_order)
                    P[p].order = &mv_order[0, 0]
                P[p].tptr = NULL
                P[p].tpair = NULL
                P[p].tslot = NULL
                if tptr is not None:
                    mv_tptr = tptr
                    keep.append(mv_tptr)
                    P[p].tptr = &mv_tptr[0]
                    if tpair is not None and len(tpair) > 0:
                        mv_tpair = tpair
                        keep.append(mv_tpair)
                        P[p].tpair = &mv_tpair[0]
                        mv_tpair = tslot
                        keep.append(mv_tpair)
                        P[p].tslot = &mv_tpair[0]
            done, reason, npred, err = self._run(
                n, &ops[0] if n > 0 else NULL, &rows[0] if n > 0 else NULL,
                &parts[0] if n > 0 else NULL, P, &ya[0] if n > 0 else NULL,
                &yb[0] if n > 0 else NULL, &yc[0] if n > 0 else NULL,
                &out_op[0] if n > 0 else NULL, &out_val[0] if n > 0 else NULL,
                &out_p[0, 0] if out_p.shape[0] > 0 and out_p.shape[1] > 0 else NULL,
                out_p.shape[1], &out_nk[0] if n > 0 else NULL)
        finally:
            free(P)
        if err:
            raise MemoryError()
        return done, reason, npred

    cdef tuple _run(self, Py_ssize_t n, const int8_t* ops, const int64_t* rows,
                    const int32_t* parts, Part* P, const double* ya, const double* yb,
                    const int32_t* yc, int64_t* out_op, double* out_val, double* out_p,
                    Py_ssize_t pstride, int32_t* out_nk):
        cdef Py_ssize_t t, npred = 0
        cdef int reason = STOP_NONE
        cdef int err = 0
        cdef int r
        with nogil:
            for t in range(n):
                if ops[t] == OP_BAD:
                    reason = STOP_UNSUPPORTED
                    break
                r = self._gather(&P[parts[t]], rows[t])
                if r != STOP_NONE:
                    reason = r
                    break
                if ops[t] == OP_PREDICT:
                    if self.family == FAM_SOFTMAX:
                        r = self._predict_softmax(out_p + npred * pstride, &out_nk[npred])
                    else:
                        r = self._predict_glm(&out_val[npred])
                    if r != STOP_NONE:
                        reason = r
                        break
                    out_op[npred] = t
                    npred += 1
                else:
                    if self.family == FAM_SOFTMAX:
                        r = self._learn_softmax(yc[t])
                    else:
                        r = self._learn_glm(ya[t], yb[t])
                    if r < 0:
                        err = 1
                        break
                    if r != STOP_NONE:
                        reason = r
                        break
            else:
                t = n
        return t, reason, npred, err

    # -- per op --------------------------------------------------------------------------------

    cdef int _gather(self, const Part* part, int64_t row) noexcept nogil:
        """The current row's numbers (in its key order) and distinct dummies."""
        cdef Py_ssize_t j, q, k = part.ncols
        cdef int32_t s
        cdef const double* vals
        cdef const uint8_t* pres
        cdef const int32_t* order
        cdef int64_t a, b
        self.stamp += 1
        self.nn = 0
        self.nd = 0
        self.npr = 0
        if k > 0:
            vals = part.values + row * k
            if part.order != NULL:
                order = part.order + row * k
                for q in range(k):
                    j = order[q]
                    if j < 0:
                        break
                    s = part.colslot[j]
                    self.num_slot[self.nn] = s
                    self.num_raw[self.nn] = vals[j]
                    self.nn += 1
            else:
                pres = part.present + row * k
                for j in range(k):
                    if pres[j]:
                        s = part.colslot[j]
                        self.num_slot[self.nn] = s
                        self.num_raw[self.nn] = vals[j]
                        self.nn += 1
        for q in range(self.nn):
            if self.flags[self.num_slot[q]] & FLAG_DUMMY:
                return STOP_UNSUPPORTED  # a number named like a one-hot dummy
        if part.tptr != NULL:
            a = part.tptr[row]
            b = part.tptr[row + 1]
            if b > a:
                if not self.has_onehot:
                    return STOP_UNSUPPORTED  # River raises on text here
                self.rpairs = part.tpair + a
                self.rslots = part.tslot + a
                self.npr = b - a
                for q in range(self.npr):
                    s = self.rslots[q]
                    if self.flags[s] & FLAG_NUMERIC:
                        return STOP_UNSUPPORTED
                    if self.mark[s] != self.stamp:
                        self.mark[s] = self.stamp
                        self.xval[s] = 1.0
                        self.dum[self.nd] = s
                        self.nd += 1
        return STOP_NONE

    cdef void _sort_dummies(self) noexcept nogil:
        """Known dummies first, by position in the encoder's zero dict; unknown ones after,
        in the row's order (as the encoder's output dict has them)."""
        cdef Py_ssize_t i, j
        cdef int32_t s, ks
        for i in range(1, self.nd):
            s = self.dum[i]
            ks = self.kpos[s]
            j = i - 1
            while j >= 0 and self._kless(ks, self.kpos[self.dum[j]]):
                self.dum[j + 1] = self.dum[j]
                j -= 1
            self.dum[j + 1] = s

    cdef inline bint _kless(self, int32_t a, int32_t b) noexcept nogil:
        if a < 0:
            return False
        if b < 0:
            return True
        return a < b

    cdef void _transform_predict(self) noexcept nogil:
        """The scaler's transform_one with the current statistics."""
        cdef Py_ssize_t e
        cdef int32_t s
        cdef double xi, vv
        for e in range(self.nn):
            s = self.num_slot[e]
            xi = self.num_raw[e]
            if self.has_scaler:
                if self.with_std:
                    vv = self.var[s]
                    # (xi - means[i]) / v**0.5 if v else 0.0 (sd[s] is v**0.5)
                    xi = (xi - self.mean[s]) / self.sd[s] if vv != 0.0 else 0.0
                else:
                    xi = xi - self.mean[s]
            self.num_xt[e] = xi
            self.mark[s] = self.stamp
            self.xval[s] = xi

    cdef void _touch_predict(self) noexcept nogil:
        """What transform_one inserted into the scaler's defaultdicts."""
        cdef Py_ssize_t e
        cdef int32_t s
        if not self.has_scaler:
            return
        for e in range(self.nn):
            s = self.num_slot[e]
            if self.with_std:
                if self.vseq[s] < 0:
                    self.vseq[s] = self.seq
                    self.seq += 1
            elif self.meanseq[s] < 0:
                self.meanseq[s] = self.seq
                self.seq += 1

    cdef Py_ssize_t _build_xs(self) noexcept nogil:
        """The nonzero part of the transformed x in River's key order: the encoder's block
        (known dummies by position, then unknown ones) and the numbers (row order)."""
        cdef Py_ssize_t e, q = 0
        if self.has_onehot and self.dummies_first:
            for e in range(self.nd):
                self.xs_slot[q] = self.dum[e]
                self.xs_val[q] = 1.0
                q += 1
        for e in range(self.nn):
            self.xs_slot[q] = self.num_slot[e]
            self.xs_val[q] = self.num_xt[e]
            q += 1
        if self.has_onehot and not self.dummies_first:
            for e in range(self.nd):
                self.xs_slot[q] = self.dum[e]
                self.xs_val[q] = 1.0
                q += 1
        return q

    cdef Py_ssize_t _build_xf(self) noexcept nogil:
        """The whole transformed x at learn time (every known dummy, 0 or 1)."""
        cdef Py_ssize_t e
        cdef Py_ssize_t q = 0
        if self.has_onehot and self.dummies_first:
            q = self._xf_dummies(q)
        for e in range(self.nn):
            self.xf_slot[q] = self.num_slot[e]
            self.xf_val[q] = self.num_xt[e]
            q += 1
        if self.has_onehot and not self.dummies_first:
            q = self._xf_dummies(q)
        return q

    cdef Py_ssize_t _xf_dummies(self, Py_ssize_t q) noexcept nogil:
        # the encoder's output: its zero dict (1 where the row has it), then the row's
        # dummies it does not know, in the row's order
        cdef Py_ssize_t e
        cdef int32_t s
        for e in range(self.nK):
            s = self.K[e]
            self.xf_slot[q] = s
            self.xf_val[q] = 1.0 if self.mark[s] == self.stamp else 0.0
            q += 1
        for e in range(self.nd):
            s = self.dum[e]
            if self.kpos[s] < 0:
                self.xf_slot[q] = s
                self.xf_val[q] = 1.0
                q += 1
        return q

    cdef inline double _glm_dot(self, Py_ssize_t nx) noexcept nogil:
        # VectorDict.dot: over x's keys in x's order, a missing weight read as 0.
        cdef double acc = 0.0
        cdef Py_ssize_t e
        for e in range(nx):
            acc = acc + self.w[self.xs_slot[e]] * self.xs_val[e]
        return acc + self.intercept

    cdef inline double _sigmoid(self, double x) noexcept nogil:
        if x < -30:
            return 0.0
        if x > 30:
            return 1.0
        return 1.0 / (1.0 + exp(-x))

    cdef int _predict_glm(self, double* out) noexcept nogil:
        cdef Py_ssize_t nx
        cdef double raw, p
        self._transform_predict()
        if self.has_onehot:
            self._sort_dummies()
        nx = self._build_xs()
        raw = self._glm_dot(nx)
        if self.family == FAM_LOG:
            p = self._sigmoid(raw)
        else:
            p = raw
        if not isfinite(p):
            return STOP_NON_FINITE
        self._touch_predict()
        out[0] = p
        return STOP_NONE

    cdef double _class_dot(self, Py_ssize_t c, Py_ssize_t nx, Py_ssize_t lenx) noexcept nogil:
        # utils.math.dot(weights, x): iterates the shorter dict (the weights when strictly
        # shorter), keeps the keys both have, and adds with Python's sum().
        cdef SumAcc acc
        cdef Py_ssize_t e
        cdef int32_t s
        cdef double* wc = self.cw[c]
        cdef int32_t* pos = self.cpos[c]
        cdef int32_t* order = self.cord[c]
        sum_init(&acc)
        if self.clen[c] < lenx:
            for e in range(self.clen[c]):
                s = order[e]
                if self.mark[s] == self.stamp:
                    sum_add(&acc, wc[s] * self.xval[s], self.compensated)
        else:
            for e in range(nx):
                s = self.xs_slot[e]
                if pos[s] >= 0:
                    sum_add(&acc, wc[s] * self.xs_val[e], self.compensated)
        return sum_result(&acc, self.compensated)

    cdef void _softmax(self, Py_ssize_t nx, Py_ssize_t lenx, double* out) noexcept nogil:
        # utils.math.softmax over {label: dot} in class order, in place.
        cdef Py_ssize_t c
        cdef double mx, total = 0.0
        for c in range(self.nC):
            out[c] = self._class_dot(c, nx, lenx)
        mx = out[0]
        for c in range(1, self.nC):
            if out[c] > mx:
                mx = out[c]
        for c in range(self.nC):
            out[c] = exp(out[c] - mx)
            total += out[c]
        for c in range(self.nC):
            out[c] = out[c] / total

    cdef Py_ssize_t _lenx(self) noexcept nogil:
        # len(x) of the transformed x: the zero dict, the row's unknown dummies, numbers
        cdef Py_ssize_t e, n = self.nn
        if self.has_onehot:
            n += self.nK
            for e in range(self.nd):
                if self.kpos[self.dum[e]] < 0:
                    n += 1
        return n

    cdef int _predict_softmax(self, double* out, int32_t* nk) noexcept nogil:
        cdef Py_ssize_t nx, lenx, c
        self._transform_predict()
        if self.has_onehot:
            self._sort_dummies()
        nx = self._build_xs()
        lenx = self._lenx()
        if self.nC > 0:
            self._softmax(nx, lenx, out)
            for c in range(self.nC):
                if not isfinite(out[c]):
                    return STOP_NON_FINITE
        self._touch_predict()
        nk[0] = <int32_t>self.nC
        return STOP_NONE

    cdef int _learn_encoder_and_scaler(self) noexcept nogil:
        """The union's (or scaler's) learn_one, then the transform with the updated
        statistics, writing through the undo logs. Returns STOP_NON_FINITE when a
        statistic turns non-finite."""
        cdef Py_ssize_t e
        cdef int32_t s, p
        cdef double xi, old, nm, nv, n
        # OneHotEncoder.learn_one: a category new to its feature puts its dummy into the
        # zero dict, in the row's order.
        if self.has_onehot:
            for e in range(self.npr):
                if not self.pair_learned[self.rpairs[e]]:
                    s = self.rslots[e]
                    if self.kpos[s] < 0:
                        self._setj(&self.kpos[s], <int32_t>self.nK)
                        self.K[self.nK] = s
                        self.nK += 1
        for e in range(self.nn):
            s = self.num_slot[e]
            xi = self.num_raw[e]
            if self.has_scaler:
                # counts[i] += 1; means[i] += (xi - old) / counts[i];
                # vars_[i] += ((xi - old) * (xi - means[i]) - vars_[i]) / counts[i]
                self._seti(&self.cnt[s], self.cnt[s] + 1)
                n = <double>self.cnt[s]
                old = self.mean[s]
                nm = old + (xi - old) / n
                if not isfinite(nm):
                    return STOP_NON_FINITE
                self._setd(&self.mean[s], nm)
                if self.cseq[s] < 0:
                    self._seti(&self.cseq[s], self.seq)
                    self.seq += 1
                if self.meanseq[s] < 0:
                    self._seti(&self.meanseq[s], self.seq)
                    self.seq += 1
                if self.with_std:
                    nv = self.var[s] + ((xi - old) * (xi - nm) - self.var[s]) / n
                    if not isfinite(nv):
                        return STOP_NON_FINITE
                    self._setd(&self.var[s], nv)
                    self._setd(&self.sd[s], pow(nv, self.half))
                    if self.vseq[s] < 0:
                        self._seti(&self.vseq[s], self.seq)
                        self.seq += 1
                    xi = (xi - nm) / self.sd[s] if nv != 0.0 else 0.0
                else:
                    xi = xi - nm
            self.num_xt[e] = xi
            self.mark[s] = self.stamp
            self.xval[s] = xi
        return STOP_NONE

    cdef void _commit_pairs(self) noexcept nogil:
        cdef Py_ssize_t q
        cdef int32_t p
        for q in range(self.npr):
            p = self.rpairs[q]
            if not self.pair_learned[p]:
                self.pair_learned[p] = 1
                self.pair_log[self.npairlog] = p
                self.npairlog += 1

    cdef inline double _clip(self, double g) noexcept nogil:
        # float(utils.math.clamp(g, -clip, clip)) = max(min(g, clip), -clip)
        if self.clip < g:
            g = self.clip
        if self.nclip > g:
            g = self.nclip
        return g

    cdef int _learn_glm(self, double ya, double yb) noexcept nogil:
        cdef Py_ssize_t nx, nf, e, nK0 = self.nK
        cdef int64_t seq0 = self.seq
        cdef int32_t s
        cdef double raw, z, lg, lr, lrt = 0.0, ni, g, nw, nm, nv, xv, bound = 0.0, acc
        cdef int r
        cdef int full = self.opt == OPT_ADAM or self.l2 != 0.0
        if self._ensure_undo(4 * (self.nK + self.nd + self.nn) + 2 * self.nn + 16,
                             4 * (self.nn + self.nK + self.nd) + 16,
                             self.nd + 4) < 0:
            return -1
        r = self._learn_encoder_and_scaler()
        if r != STOP_NONE:
            self._undo()
            self.nK = nK0
            self.seq = seq0
            return r
        if self.has_onehot:
            self._sort_dummies()
        nx = self._build_xs()
        # The dot product in learn mode inserts the missing keys (initializer value), in
        # x's order: the encoder's block (every known dummy), then the numbers.
        if self.has_onehot and self.dummies_first:
            self._create_known_glm()
        for e in range(self.nn):
            s = self.num_slot[e]
            if self.wseq[s] < 0:
                self._create_glm(s)
        if self.has_onehot and not self.dummies_first:
            self._create_known_glm()
        raw = self._glm_dot(nx)
        # loss.gradient(y_true=y, y_pred=raw) * 1.0, clamped
        if self.family == FAM_LOG:
            z = raw * ya
            if z > 18.0:
                lg = yb * exp(-z) * -ya
            elif z < -18.0:
                lg = yb * -ya
            else:
                lg = yb * -ya / (exp(z) + 1.0)
        else:
            lg = 2 * (raw - ya)
        lg = self._clip(lg)
        ni = self.intercept - sched_get(&self.ilr, self.n_iter) * lg
        lr = sched_get(&self.lr, self.n_iter)
        if self.opt == OPT_ADAM:
            lrt = lr * pow(1 - pow(self.b2, <double>(self.n_iter + 1)), self.half)
            lrt = lrt / (1 - pow(self.b1, <double>(self.n_iter + 1)))
        if full:
            nf = self._build_xf()
        else:
            nf = nx
        for e in range(nf):
            if full:
                s = self.xf_slot[e]
                xv = self.xf_val[e]
            else:
                s = self.xs_slot[e]
                xv = self.xs_val[e]
            # gradient = from_scaled(x, lg) (+ l2 * weights)
            g = xv * lg
            if self.l2 != 0.0:
                g = g + self.w[s] * self.l2
            if self.opt == OPT_SGD:
                nw = self.w[s] - g * lr
            else:
                nm = self.b1 * self.m[s] + self.omb1 * g
                nv = self.b2 * self.v[s] + self.omb2 * (g * g)
                nw = self.w[s] - lrt * nm / (pow(nv, self.half) + self.eps)
                if not (isfinite(nm) and isfinite(nv)):
                    r = STOP_NON_FINITE
                    break
                self._setd(&self.m[s], nm)
                self._setd(&self.v[s], nv)
            if not isfinite(nw):
                r = STOP_NON_FINITE
                break
            self._setd(&self.w[s], nw)
            bound += fabs(nw * xv)
        if r == STOP_NONE and not isfinite(ni):
            r = STOP_NON_FINITE
        if r == STOP_NONE:
            self._setd(&self.intercept, ni)
            self._seti(&self.n_iter, self.n_iter + 1)
            if not (bound + fabs(ni) < SAFE_BOUND):
                # The example's own prediction after learning must be finite too.
                acc = self._glm_dot(nx)
                if (self.family == FAM_LOG and isnan(acc)) or (
                        self.family != FAM_LOG and not isfinite(acc)):
                    r = STOP_NON_FINITE
        if r != STOP_NONE:
            self._undo()
            self.nK = nK0
            self.seq = seq0
            return r
        self._forget()
        if self.has_onehot:
            self.kptr = self.nK
            self._commit_pairs()
        return STOP_NONE

    cdef inline void _create_glm(self, int32_t s) noexcept nogil:
        self._seti(&self.wseq[s], self.seq)
        self.seq += 1
        self._setd(&self.w[s], self.init)

    cdef void _create_known_glm(self) noexcept nogil:
        cdef Py_ssize_t e
        cdef int32_t s
        for e in range(self.kptr, self.nK):
            s = self.K[e]
            if self.wseq[s] < 0:
                self._create_glm(s)
        for e in range(self.nd):
            s = self.dum[e]
            if self.kpos[s] < 0 and self.wseq[s] < 0:
                self._create_glm(s)

    cdef inline void _create_class(self, Py_ssize_t c, int32_t s) noexcept nogil:
        self._setj(&self.cpos[c][s], <int32_t>self.clen[c])
        self.cord[c][self.clen[c]] = s
        self._seti(&self.clen[c], self.clen[c] + 1)

    cdef void _create_known_class(self, Py_ssize_t c) noexcept nogil:
        cdef Py_ssize_t e
        cdef int32_t s
        for e in range(self.ckptr[c], self.nK):
            s = self.K[e]
            if self.cpos[c][s] < 0:
                self._create_class(c, s)
        for e in range(self.nd):
            s = self.dum[e]
            if self.kpos[s] < 0 and self.cpos[c][s] < 0:
                self._create_class(c, s)

    cdef int _learn_softmax(self, int32_t yc) noexcept nogil:
        cdef Py_ssize_t nx, nf, e, c, ncls, lenx, nK0 = self.nK, nC0 = self.nC
        cdef int64_t seq0 = self.seq
        cdef int32_t s
        cdef double loss, lr, lrt = 0.0, g, nw, nm, nv, xv, bound
        cdef double* wc
        cdef double* mc
        cdef double* vc
        cdef int r
        cdef int full = self.opt == OPT_ADAM or self.l2 != 0.0
        ncls = self.nC + 1 if yc == self.nC else self.nC
        if self._ensure_undo(ncls * 4 * (self.nK + self.nd + self.nn) + 6 * self.nn + 16,
                             ncls * (self.nK + self.nd + self.nn + 2) + 4 * self.nn + 16,
                             ncls * (self.nK + self.nd + self.nn) + self.nd + 4) < 0:
            return -1
        r = self._learn_encoder_and_scaler()
        if r != STOP_NONE:
            self._undo()
            self.nK = nK0
            self.seq = seq0
            return r
        if self.has_onehot:
            self._sort_dummies()
        nx = self._build_xs()
        lenx = self._lenx()
        # y_pred = predict_proba_one(x), over the classes known before this example
        if self.nC > 0:
            self._softmax(nx, lenx, self.cp)
        if yc == self.nC:
            self.cp[self.nC] = 0.0  # y_pred.get(label, 0.0)
            self.clen[yc] = 0
            self.citer[yc] = 0
            self.ckptr[yc] = 0
            self.nC += 1
        if full:
            nf = self._build_xf()
        else:
            nf = nx
        for c in range(ncls):
            # CrossEntropy: clamp_proba(p) - (y_true == label)
            loss = self.cp[c]
            if self.pmax < loss:
                loss = self.pmax
            if self.pmin > loss:
                loss = self.pmin
            loss = loss - (1.0 if c == yc else 0.0)
            wc = self.cw[c]
            mc = self.cm[c]
            vc = self.cv[c]
            # The gradient dict has x's keys in x's order; the step creates the missing
            # ones in that order.
            if self.has_onehot and self.dummies_first:
                self._create_known_class(c)
            for e in range(self.nn):
                s = self.num_slot[e]
                if self.cpos[c][s] < 0:
                    self._create_class(c, s)
            if self.has_onehot and not self.dummies_first:
                self._create_known_class(c)
            lr = sched_get(&self.lr, self.citer[c])
            if self.opt == OPT_ADAM:
                lrt = lr * pow(1 - pow(self.b2, <double>(self.citer[c] + 1)), self.half)
                lrt = lrt / (1 - pow(self.b1, <double>(self.citer[c] + 1)))
            bound = 0.0
            for e in range(nf):
                if full:
                    s = self.xf_slot[e]
                    xv = self.xf_val[e]
                else:
                    s = self.xs_slot[e]
                    xv = self.xs_val[e]
                # {i: xi * loss + l2 * weights.get(i, 0)}
                g = xv * loss + self.l2 * wc[s]
                if self.opt == OPT_SGD:
                    nw = wc[s] - lr * g
                else:
                    nm = self.b1 * mc[s] + self.omb1 * g
                    nv = self.b2 * vc[s] + self.omb2 * pow(g, self.two)
                    nw = wc[s] - lrt * nm / (pow(nv, self.half) + self.eps)
                    if not (isfinite(nm) and isfinite(nv)):
                        r = STOP_NON_FINITE
                        break
                    self._setd(&mc[s], nm)
                    self._setd(&vc[s], nv)
                if not isfinite(nw):
                    r = STOP_NON_FINITE
                    break
                self._setd(&wc[s], nw)
                bound += fabs(nw * xv)
            if r != STOP_NONE:
                break
            self._seti(&self.citer[c], self.citer[c] + 1)
            self.cbound[c] = bound
        if r == STOP_NONE:
            for c in range(ncls):
                if not (self.cbound[c] < SAFE_BOUND):
                    # The example's own prediction after learning must be finite too.
                    self._softmax(nx, lenx, self.cp)
                    for e in range(self.nC):
                        if not isfinite(self.cp[e]):
                            r = STOP_NON_FINITE
                    break
        if r != STOP_NONE:
            self._undo()
            self.nK = nK0
            self.nC = nC0
            self.seq = seq0
            return r
        self._forget()
        if self.has_onehot:
            for c in range(self.nC):
                self.ckptr[c] = self.nK
            self._commit_pairs()
        return STOP_NONE
