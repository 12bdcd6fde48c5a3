"""River's linear models as a compiled loop that reproduces River bit for bit.

:func:`compile_river` recognises a River estimator it can run exactly and wraps it in a
:class:`CompiledLinear`; :meth:`CompiledLinear.apply` then runs a batch of *predict* and
*learn* operations, in order, over :class:`~eddy.models.kernels.columns.FeatureColumns` rows,
at a fraction of a microsecond each. The River object stays the truth: the kernel holds
a copy of its state, :meth:`~CompiledLinear.sync` writes the kernel's state back into it
and :meth:`~CompiledLinear.reload` reads it again.

Recognised (by exact type and hyperparameters; anything else gives ``None``):

- ``linear_model.LogisticRegression`` (task "binary"), ``linear_model.LinearRegression``
  ("regression"), ``linear_model.SoftmaxRegression`` ("binary" or "multiclass");
- alone, behind ``preprocessing.StandardScaler()`` (``window_size=None``), or behind
  ``compose.TransformerUnion(compose.SelectType(int, float) | preprocessing.StandardScaler(),
  compose.SelectType(str) | preprocessing.OneHotEncoder())`` (either order of the two);
- optimizers ``optim.SGD`` and ``optim.Adam``, learning rates given as numbers or as
  ``optim.schedulers.Constant``, ``InverseScaling`` or ``Optimal``; ``l2``,
  ``intercept_init``, ``intercept_lr`` (number or one of those schedulers),
  ``clip_gradient``, an ``optim.initializers.Zeros`` or ``Constant`` initializer;
  default losses (``Log`` with any class weights, ``Squared``, ``CrossEntropy`` without
  class weights).

What River does, and the kernel with it (the integrator's rules):

- A pipeline's ``learn_one`` learns the scaler (and the encoder) first and transforms
  with the updated statistics; ``predict_*_one`` transforms with the current ones.
  The scaler's ``transform_one`` returns 0.0 for a feature whose variance is 0 (a
  feature never learned, or seen once) and inserts it into ``vars`` (with
  ``with_std=False``, into ``means``).
- GLM dot products (``VectorDict.dot``) iterate the transformed x in its key order,
  reading a missing weight as 0: a feature never learned contributes ``0 * x``. In
  learn mode the missing weights are first created with the initializer's value, in
  x's order. Adam's moments are updated with ``g * g``; the scaler and Adam divide by
  ``v ** 0.5`` (libm ``pow``, not ``sqrt``).
- SoftmaxRegression's ``utils.math.dot`` iterates the weights of a class when that
  class has fewer weights than x has keys, else x, keeps keys present in both, and
  adds with ``sum()`` (compensated from CPython 3.12 on: detected at import). Classes
  are kept in order of first appearance as a learned label; each has its own copy of
  the optimizer (its own iteration count and Adam moments) and its own key order.
  Adam there squares with ``g ** 2`` (libm ``pow``).
- The union's output puts the one-hot block first (``TransformerUnion`` updates its
  result in reverse order), and that block holds *every* known category (0 where the
  row lacks it), in order of first learning, then the row's unknown ones: with Adam or
  ``l2`` every known dummy's weight moves at every learn.
- Binary labels: River signs them as ``-1 if y == 0 else int(y)``; a label it cannot
  sign (NaN, a string) makes the loop stop before that op.

Rows: ``columns`` is one :class:`FeatureColumns` or a sequence of them; ``rows`` index
their concatenation (row ``r`` of the second part is ``len(first) + r``), so a learn op
may refer to a row of an earlier batch by passing that batch's columns too. Nothing is
copied: each FeatureColumns' name mapping and text encoding is cached by identity.

The guard: ``apply`` stops *before* an op that would leave a non-finite number in the
state, give a non-finite prediction, or (for a learn) leave the example's own
prediction non-finite; and before an op River would raise on (text features in a model
without the one-hot encoder, a number named like a one-hot dummy, a label River cannot
use). The state is then exactly as after the ops before it, and :class:`Applied` says
where and why, so the caller can run that op through River itself::

    applied = kernel.apply(ops, columns, rows, y)
    if applied.stopped_at is not None:
        kernel.sync()
        ...  # River's own (guarded) path for ops[applied.stopped_at]
        kernel.reload()
        ...  # apply the rest

Ownership: between :meth:`sync` and :meth:`reload`, whoever learns owns the state.
After ``apply`` the River object is stale until ``sync()``; after River learns by
itself, call ``reload()`` before the next ``apply``.
"""

from __future__ import annotations

import collections
import copy
import math
import random
from collections.abc import Hashable, Sequence
from dataclasses import dataclass
from typing import Any, NoReturn

import numpy as np
import numpy.typing as npt
from river import compose, linear_model, optim, preprocessing, utils

from eddy.models.kernels import _linear
from eddy.models.kernels.columns import FeatureColumns

PREDICT = 0
LEARN = 1

_BAD = 2
_FAM_LOG, _FAM_SQUARED, _FAM_SOFTMAX = 0, 1, 2
_OPT_SGD, _OPT_ADAM = 0, 1
_SCHED_CONSTANT, _SCHED_INVERSE, _SCHED_OPTIMAL = 0, 1, 2
_FLAG_NUMERIC, _FLAG_DUMMY = 1, 2
_REASONS = {1: "non_finite", 2: "unsupported"}
_CACHE_SIZE = 16


def _python_sum_mode() -> tuple[int, bool]:
    """How this interpreter's ``sum()`` adds floats (0: left to right, 1: Neumaier), and
    whether the kernel reproduces it on a battery of hard cases."""
    compensated = int(sum([1e100, 1.0, -1e100]) == 1.0)
    rng = random.Random(20261206)
    cases = [[1e100, 1.0, -1e100], [0.1] * 10, [1e16, 1.0, -1e16, 1.0], [-0.0], []]
    for _ in range(300):
        n = rng.randint(1, 40)
        cases.append([rng.uniform(-1, 1) * 10 ** rng.randint(-20, 20) for _ in range(n)])
    ok = all(
        _linear.probe_python_sum(np.array(c, dtype=np.float64), compensated) == sum(c)
        for c in cases
    )
    return compensated, ok


_COMPENSATED, _SUM_EXACT = _python_sum_mode()


class _NotCompilable(Exception):
    """The River object is outside what the kernel reproduces."""


def _refuse(why: str) -> NoReturn:
    raise _NotCompilable(why)


# -- recognition ---------------------------------------------------------------------------


def _number(x: Any) -> bool:
    return (
        type(x) in (int, float, bool) and math.isfinite(x) and float(x) == x  # type: ignore[arg-type]
    )


def _scheduler(s: Any) -> tuple[int, float, float]:
    t = type(s)
    if t is optim.schedulers.Constant and _number(s.learning_rate):
        return (_SCHED_CONSTANT, float(s.learning_rate), 0.0)
    if t is optim.schedulers.InverseScaling and _number(s.learning_rate) and _number(s.power):
        return (_SCHED_INVERSE, float(s.learning_rate), float(s.power))
    if t is optim.schedulers.Optimal and _number(s.alpha) and s.alpha > 0 and _number(s.t0):
        return (_SCHED_OPTIMAL, float(s.alpha), float(s.t0))
    _refuse(f"scheduler {s!r}")


def _optimizer(o: Any) -> tuple[int, tuple[int, float, float], float, float, float]:
    if type(o) is optim.SGD:
        return _OPT_SGD, _scheduler(o.lr), 0.0, 0.0, 0.0
    if type(o) is optim.Adam:
        b1, b2, eps = o.beta_1, o.beta_2, o.eps
        if not (_number(b1) and _number(b2) and _number(eps)):
            _refuse("Adam hyperparameters")
        if not (0 <= b1 < 1 and 0 <= b2 < 1 and eps > 0):
            _refuse("Adam hyperparameters")
        return _OPT_ADAM, _scheduler(o.lr), float(b1), float(b2), float(eps)
    _refuse(f"optimizer {type(o).__name__}")


def _check_scaler(s: Any) -> None:
    if type(s) is not preprocessing.StandardScaler or s.window_size is not None:
        _refuse("scaler")


@dataclass(frozen=True, slots=True)
class _Spec:
    model: Any
    family: int
    scaler: Any  # StandardScaler or None
    onehot: Any  # OneHotEncoder or None
    dummies_first: bool


def _recognise(estimator: Any, task: str) -> _Spec:
    scaler = onehot = None
    dummies_first = True
    model = estimator
    if type(estimator) is compose.Pipeline:
        steps = list(estimator.steps.values())
        if len(steps) != 2:
            _refuse("pipeline shape")
        pre, model = steps
        if type(pre) is preprocessing.StandardScaler:
            scaler = pre
        elif type(pre) is compose.TransformerUnion:
            scaler, onehot, dummies_first = _union(pre)
        else:
            _refuse(f"transformer {type(pre).__name__}")
        _check_scaler(scaler)
    family = _model_family(model, task)
    return _Spec(model, family, scaler, onehot, dummies_first)


def _union(u: Any) -> tuple[Any, Any, bool]:
    subs = list(u.transformers.values())
    if len(subs) != 2:
        _refuse("union shape")
    found: dict[str, tuple[int, Any]] = {}
    for i, sub in enumerate(subs):
        if type(sub) is not compose.Pipeline or len(sub.steps) != 2:
            _refuse("union branch")
        select, step = list(sub.steps.values())
        if type(select) is not compose.SelectType:
            _refuse("union branch")
        types = set(select.types)
        if types == {int, float} and type(step) is preprocessing.StandardScaler:
            found["numbers"] = (i, step)
        elif (
            types == {str}
            and type(step) is preprocessing.OneHotEncoder
            and step.categories is None
            and not step.drop_zeros
            and not step.drop_first
        ):
            found["text"] = (i, step)
    if set(found) != {"numbers", "text"}:
        _refuse("union branches")
    # TransformerUnion.transform_one updates its result in reverse order: the branch
    # given second comes first in the transformed x.
    return found["numbers"][1], found["text"][1], found["numbers"][0] == 0


def _model_family(m: Any, task: str) -> int:
    t = type(m)
    if t is linear_model.LogisticRegression or t is linear_model.LinearRegression:
        if t is linear_model.LogisticRegression:
            loss_ok = (
                type(m.loss) is optim.losses.Log
                and _number(m.loss.weight_pos)
                and _number(m.loss.weight_neg)
            )
            family, want = _FAM_LOG, "binary"
        else:
            loss_ok = type(m.loss) is optim.losses.Squared
            family, want = _FAM_SQUARED, "regression"
        init = m.initializer
        if not (
            task == want
            and loss_ok
            and m.l1 == 0
            and _number(m.l2)
            and _number(m.clip_gradient)
            and _number(m.intercept)
            and type(init) in (optim.initializers.Zeros, optim.initializers.Constant)
            and _number(init.value)
            and type(m._weights) is utils.VectorDict
        ):
            _refuse("GLM hyperparameters")
        _scheduler(m.intercept_lr)
        _optimizer(m.optimizer)
        if type(m.optimizer) is optim.Adam and not (
            (m.optimizer.m is None and m.optimizer.v is None)
            or (type(m.optimizer.m) is utils.VectorDict and type(m.optimizer.v) is utils.VectorDict)
        ):
            _refuse("Adam state")
        return family
    if t is linear_model.SoftmaxRegression:
        o = m.optimizer
        if not (
            task in ("binary", "multiclass")
            and _SUM_EXACT
            and type(m.loss) is optim.losses.CrossEntropy
            and m.loss.class_weight == {}
            and _number(m.l2)
            and isinstance(m.weights, collections.defaultdict)
            and isinstance(m.optimizers, collections.defaultdict)
            and o.n_iterations == 0
            and getattr(o, "m", None) is None
            and getattr(o, "v", None) is None
        ):
            _refuse("softmax hyperparameters")
        _optimizer(o)
        return _FAM_SOFTMAX
    _refuse(f"model {t.__name__}")


def compile_river(estimator: Any, task: str) -> CompiledLinear | None:
    """A compiled kernel for ``estimator`` (a River object, which stays the truth), or
    ``None`` when it is not one the kernel reproduces exactly (see the module docstring).

    ``task`` is "binary", "multiclass" or "regression". The kernel starts from the
    estimator's current state (it may have learned already).
    """
    try:
        spec = _recognise(estimator, task)
        return CompiledLinear(estimator, task, spec)
    except _NotCompilable:
        return None


# -- results -------------------------------------------------------------------------------


@dataclass(frozen=True, slots=True, eq=False)
class Applied:
    """What :meth:`CompiledLinear.apply` did.

    Attributes
    ----------
    kind
        "binary" (LogisticRegression: ``values`` holds p(True)), "multiclass"
        (SoftmaxRegression, whatever the task: ``values`` is a matrix over ``classes``)
        or "regression" (``values`` holds ``predict_one``'s answers).
    done
        How many ops ran: all of them, or ``stopped_at``.
    stopped_at
        ``None``, or the index of the first op not run (it and every later op are
        untouched); ``reason`` says why: "non_finite" or "unsupported".
    predicted
        int64, the op index of each prediction, in op order (one per predict op run).
    values
        float64, one row per prediction: see ``kind``. For "multiclass", row ``k``
        holds the probabilities of the ``n_known[k]`` classes known at that moment
        (classes only ever join at the end), NaN after them.
    n_known
        int32, per prediction ("multiclass" only; 0: River answers ``{}``).
    classes
        The class labels in River's order after the ops ("multiclass" only).
    """

    kind: str
    done: int
    stopped_at: int | None
    reason: str | None
    predicted: npt.NDArray[np.int64]
    values: npt.NDArray[np.float64]
    n_known: npt.NDArray[np.int32] | None = None
    classes: tuple[Hashable, ...] = ()

    def river(self, k: int) -> Any:
        """Prediction ``k`` as River returns it: ``predict_proba_one``'s dict for the
        classifiers, ``predict_one``'s float for regression."""
        if self.kind == "regression":
            return float(self.values[k])
        if self.kind == "binary":
            return _binary_dict(float(self.values[k]))
        assert self.n_known is not None
        row = self.values[k].tolist()
        return {self.classes[c]: row[c] for c in range(int(self.n_known[k]))}

    def river_all(self) -> list[Any]:
        """Every prediction as River returns it, in op order."""
        if self.kind == "regression":
            return self.values.tolist()
        if self.kind == "binary":
            return [_binary_dict(p) for p in self.values.tolist()]
        assert self.n_known is not None
        classes = self.classes
        return [
            {classes[c]: row[c] for c in range(nk)}
            for row, nk in zip(self.values.tolist(), self.n_known.tolist(), strict=True)
        ]


def _binary_dict(p: float) -> dict[bool, float]:
    # utils.math.sigmoid returns the ints 0 and 1 beyond +-30 (and only there).
    if p == 0.0 or p == 1.0:
        return {False: 1.0 - p, True: int(p)}
    return {False: 1.0 - p, True: p}


# -- the kernel ----------------------------------------------------------------------------


class CompiledLinear:
    """A recognised River linear model and its compiled copy (see the module docstring).

    Build it with :func:`compile_river`. Pickling pickles the synced River object; the
    kernel is rebuilt from it on unpickling.
    """

    def __init__(self, estimator: Any, task: str, spec: _Spec | None = None) -> None:
        self.estimator = estimator
        self.task = task
        self._spec = spec if spec is not None else _recognise(estimator, task)
        s = self._spec
        self.kind = {_FAM_LOG: "binary", _FAM_SQUARED: "regression"}.get(s.family, "multiclass")
        opt, lr, b1, b2, eps = _optimizer(s.model.optimizer)
        self._adam = opt == _OPT_ADAM
        k = _linear.Kernel()
        if s.family == _FAM_SOFTMAX:
            ilr, clip, init = (_SCHED_CONSTANT, 0.0, 0.0), 0.0, 0.0
        else:
            ilr = _scheduler(s.model.intercept_lr)
            clip, init = float(s.model.clip_gradient), float(s.model.initializer.value)
        k.configure(
            s.family,
            opt,
            int(s.scaler is not None),
            int(bool(s.scaler.with_std)) if s.scaler is not None else 0,
            int(s.onehot is not None),
            int(s.dummies_first),
            _COMPENSATED,
            lr,
            ilr,
            float(s.model.l2),
            clip,
            init,
            b1,
            b2,
            eps,
        )
        if s.family == _FAM_LOG:
            self._wpos = float(s.model.loss.weight_pos)
            self._wneg = float(s.model.loss.weight_neg)
        self._k = k
        self._names: list[Hashable] = []
        self._slot: dict[Hashable, int] = {}
        self._pair: dict[tuple[Hashable, str], int] = {}  # (feature, category) -> pair id
        self._pairs: list[tuple[Hashable, str]] = []
        self._dummy: dict[tuple[type, Hashable, str], tuple[int, int]] = {}
        self._classes: list[Hashable] = []
        self._class_index: dict[Hashable, int] = {}
        self._cache: collections.OrderedDict[int, tuple[FeatureColumns, tuple[Any, ...]]] = (
            collections.OrderedDict()
        )
        self.reload()

    # -- pickling: the synced River object is the state --------------------------------------

    def __getstate__(self) -> dict[str, Any]:
        self.sync()
        return {"estimator": self.estimator, "task": self.task}

    def __setstate__(self, state: dict[str, Any]) -> None:
        self.__init__(state["estimator"], state["task"])  # type: ignore[misc]

    # -- names ---------------------------------------------------------------------------------

    def _slot_of(self, name: Hashable, flag: int = 0) -> int:
        s = self._slot.get(name)
        if s is None:
            s = len(self._names)
            self._slot[name] = s
            self._names.append(name)
            self._k.ensure_slots(s + 1)
        if flag:
            self._k.set_flags(s, flag)
        return s

    def _pair_of(self, name: Hashable, cat: str) -> tuple[int, int]:
        """(pair id, dummy slot) of a text feature's category, as this row names it."""
        key = (type(name), name, cat)
        hit = self._dummy.get(key)
        if hit is not None:
            return hit
        pid = self._pair.get((name, cat))
        if pid is None:
            pid = len(self._pairs)
            self._pair[(name, cat)] = pid
            self._pairs.append((name, cat))
            self._k.ensure_pairs(pid + 1)
            self._k.set_pair(pid, False)
        hit = (pid, self._slot_of(f"{name}_{cat}", _FLAG_DUMMY))
        self._dummy[key] = hit
        return hit

    def _prepare(self, part: FeatureColumns) -> tuple[Any, ...]:
        hit = self._cache.get(id(part))
        if hit is not None and hit[0] is part:
            self._cache.move_to_end(id(part))
            return hit[1]
        n = len(part)
        colslot = np.fromiter(
            (self._slot_of(name, _FLAG_NUMERIC) for name in part.names),
            dtype=np.int32,
            count=len(part.names),
        )
        values = np.ascontiguousarray(part.values, dtype=np.float64)
        present = np.ascontiguousarray(part.present, dtype=np.bool_).view(np.uint8)
        order = None if part.order is None else np.ascontiguousarray(part.order, dtype=np.int32)
        if values.shape != (n, len(part.names)) or present.shape != values.shape:
            msg = "FeatureColumns: values/present shape does not match names"
            raise ValueError(msg)
        tptr = tpair = tslot = None
        if part.text is not None:
            tptr = np.zeros(n + 1, dtype=np.int64)
            pairs: list[int] = []
            slots: list[int] = []
            onehot = self._spec.onehot is not None
            for i, text in enumerate(part.text):
                if text:
                    if onehot:
                        for name, cat in text.items():
                            pid, slot = self._pair_of(name, cat)
                            pairs.append(pid)
                            slots.append(slot)
                    else:
                        slots.extend([0] * len(text))
                tptr[i + 1] = len(slots)
            if onehot:
                tpair = np.array(pairs, dtype=np.int32)
                tslot = np.array(slots, dtype=np.int32)
        prepared = (values, present, order, colslot, tptr, tpair, tslot)
        self._cache[id(part)] = (part, prepared)
        if len(self._cache) > _CACHE_SIZE:
            self._cache.popitem(last=False)
        return prepared

    # -- labels --------------------------------------------------------------------------------

    def _labels(
        self, ops: npt.NDArray[np.int8], y: Any
    ) -> tuple[npt.NDArray[np.float64], npt.NDArray[np.float64], npt.NDArray[np.int32], int]:
        n = len(ops)
        ya = np.zeros(n, dtype=np.float64)
        yb = np.zeros(n, dtype=np.float64)
        yc = np.zeros(n, dtype=np.int32)
        learn = np.flatnonzero(ops == LEARN)
        if len(learn) == 0:
            return ya, yb, yc, len(self._classes)
        family = self._spec.family
        arr = y if isinstance(y, np.ndarray) else None
        if family == _FAM_SOFTMAX:
            index, classes = self._class_index, self._classes
            for i in learn.tolist():
                label = y[i]
                try:
                    c = index.get(label)
                except TypeError:  # unhashable: River raises
                    ops[i] = _BAD
                    continue
                if c is None:
                    c = len(classes)
                    index[label] = c
                    classes.append(label)
                yc[i] = c
            return ya, yb, yc, len(classes)
        if arr is not None and arr.dtype.kind in "biuf" and arr.shape == (n,):
            # Whole arrays: the entries at predict ops are computed and never read.
            v = arr.astype(np.float64, copy=False)
            if family == _FAM_SQUARED:
                return np.ascontiguousarray(v), yb, yc, 0
            with np.errstate(invalid="ignore"):
                zero = v == 0
                ya = np.where(zero, -1.0, np.trunc(v))
            yb = np.where(zero, self._wneg, self._wpos)
            if arr.dtype.kind == "f":
                ops[~np.isfinite(v) & (ops == LEARN)] = _BAD
            return ya, yb, yc, 0
        for i in learn.tolist():
            label = y[i]
            try:
                if family == _FAM_SQUARED:
                    ya[i] = float(label)
                elif label == 0:
                    ya[i], yb[i] = -1.0, self._wneg
                else:
                    ya[i], yb[i] = float(int(label)), self._wpos
            except (TypeError, ValueError, OverflowError):
                ops[i] = _BAD
        return ya, yb, yc, 0

    # -- the batch -----------------------------------------------------------------------------

    def apply(
        self,
        ops: npt.ArrayLike,
        columns: FeatureColumns | Sequence[FeatureColumns],
        rows: npt.ArrayLike,
        y: Any,
    ) -> Applied:
        """Run ``ops`` in order: ``ops[i]`` is :data:`PREDICT` (River's
        ``predict_proba_one`` / ``predict_one`` of row ``rows[i]`` at that point) or
        :data:`LEARN` (``learn_one(row rows[i], y[i])``).

        ``rows`` index the concatenation of ``columns`` (one FeatureColumns or a
        sequence of them). ``y`` has one entry per op; entries at predict ops are
        ignored. A numeric numpy array (bool, int, float) is fastest for "binary" and
        "regression"; class labels are any hashables. Stops early as the module
        docstring says; see :class:`Applied` for what comes back.
        """
        if compose.Pipeline._LEARN_UNSUPERVISED_DURING_PREDICT:
            return self._stopped_before_anything(len(ops))  # type: ignore[arg-type]
        op = np.array(ops, dtype=np.int8, copy=True).reshape(-1)
        if op.size and ((op < PREDICT) | (op > LEARN)).any():
            msg = "ops must be PREDICT (0) or LEARN (1)"
            raise ValueError(msg)
        row = np.ascontiguousarray(rows, dtype=np.int64).reshape(-1)
        if row.shape != op.shape:
            msg = "rows must have one entry per op"
            raise ValueError(msg)
        parts = [columns] if isinstance(columns, FeatureColumns) else list(columns)
        sizes = np.array([len(p) for p in parts], dtype=np.int64)
        total = int(sizes.sum())
        if row.size and (row.min() < 0 or row.max() >= total):
            msg = "a row index is outside the columns"
            raise IndexError(msg)
        if len(parts) == 1:
            part = np.zeros(row.shape, dtype=np.int32)
            local = row
        else:
            starts = np.concatenate([[0], np.cumsum(sizes)[:-1]])
            part = (np.searchsorted(starts, row, side="right") - 1).astype(np.int32)
            local = np.ascontiguousarray(row - starts[part])
        arrays = [self._prepare(p) for p in parts]
        ya, yb, yc, n_classes = self._labels(op, y)
        n = len(op)
        softmax = self._spec.family == _FAM_SOFTMAX
        if softmax:
            self._k.ensure_classes(n_classes + 1)
        out_op = np.empty(n, dtype=np.int64)
        out_val = np.empty(n, dtype=np.float64)
        out_p = np.full((n, n_classes) if softmax else (0, 0), np.nan, dtype=np.float64)
        out_nk = np.zeros(n, dtype=np.int32)
        done, reason, npred = self._k.run(
            op, local, part, arrays, ya, yb, yc, out_op, out_val, out_p, out_nk
        )
        if softmax:
            kept = self._k.nC
            for label in self._classes[kept:]:
                del self._class_index[label]
            del self._classes[kept:]
            values = out_p[:npred, :kept]
            n_known: npt.NDArray[np.int32] | None = out_nk[:npred]
        else:
            values = out_val[:npred]
            n_known = None
        return Applied(
            kind=self.kind,
            done=int(done),
            stopped_at=None if done == n else int(done),
            reason=_REASONS.get(reason),
            predicted=out_op[:npred],
            values=values,
            n_known=n_known,
            classes=tuple(self._classes) if softmax else (),
        )

    def _stopped_before_anything(self, n: int) -> Applied:
        softmax = self._spec.family == _FAM_SOFTMAX
        return Applied(
            kind=self.kind,
            done=0,
            stopped_at=0 if n else None,
            reason="unsupported" if n else None,
            predicted=np.empty(0, dtype=np.int64),
            values=np.empty((0, len(self._classes)) if softmax else 0, dtype=np.float64),
            n_known=np.empty(0, dtype=np.int32) if softmax else None,
            classes=tuple(self._classes) if softmax else (),
        )

    # -- the River object ----------------------------------------------------------------------

    def reload(self) -> None:
        """Read the whole state from the River object (after River learned by itself,
        or after a restore). Raises ValueError if that state is not one the kernel
        can continue exactly (a non-finite number, a non-number)."""
        k, s = self._k, self._spec
        k.reset()
        try:
            self._load_scaler()
            self._load_onehot()
            if s.family == _FAM_SOFTMAX:
                self._load_softmax()
            else:
                self._load_glm()
        except _NotCompilable as e:
            msg = f"cannot compile this River state: {e}"
            raise ValueError(msg) from e
        k.finish_load()
        if not k.all_finite():
            msg = "cannot compile this River state: a non-finite number"
            raise ValueError(msg)
        self._synced_known = k.nK
        self._synced_pairs = 0

    def _floats(self, values: Any) -> npt.NDArray[np.float64]:
        vs = list(values)
        if not all(type(v) in (float, int, bool) or isinstance(v, np.floating) for v in vs):
            _refuse("a non-number in the state")
        return np.array(vs, dtype=np.float64)

    def _slots(self, keys: Any) -> npt.NDArray[np.int32]:
        return np.array([self._slot_of(key) for key in keys], dtype=np.int32)

    def _load_scaler(self) -> None:
        sc = self._spec.scaler
        if sc is None:
            return
        counts, means, vars_ = sc.counts, sc.means, sc.vars
        if not all(type(c) is int and c >= 0 for c in counts.values()):
            _refuse("scaler counts")
        self._k.load_scaler(
            self._slots(counts),
            np.array(list(counts.values()), dtype=np.int64),
            self._slots(means),
            self._floats(means.values()),
            self._slots(vars_),
            self._floats(vars_.values()),
        )

    def _load_onehot(self) -> None:
        oh = self._spec.onehot
        if oh is None:
            return
        known = [self._slot_of(name, _FLAG_DUMMY) for name in oh._zero_dict]
        self._k.load_known(np.array(known, dtype=np.int32))
        for name, cats in oh.values.items():
            for cat in cats:
                pid, _ = self._pair_of(name, cat)
                self._k.set_pair(pid, True)

    def _load_glm(self) -> None:
        m = self._spec.model
        weights = m._weights.to_dict()
        keys = list(weights)
        w = self._floats(weights.values())
        mv = np.zeros_like(w)
        vv = np.zeros_like(w)
        if self._adam and m.optimizer.m is not None:
            md, vd = m.optimizer.m.to_dict(), m.optimizer.v.to_dict()
            if md.keys() != weights.keys() or vd.keys() != weights.keys():
                _refuse("Adam moments and weights have different keys")
            mv = self._floats(md[key] for key in keys)
            vv = self._floats(vd[key] for key in keys)
        self._k.load_weights(self._slots(keys), w, mv, vv)
        if not _number(m.intercept) or type(m.optimizer.n_iterations) is not int:
            _refuse("intercept or iteration count")
        self._k.intercept = float(m.intercept)
        self._k.n_iter = m.optimizer.n_iterations
        self._n_iter_loaded = m.optimizer.n_iterations

    def _load_softmax(self) -> None:
        m = self._spec.model
        self._classes = list(m.weights)
        self._class_index = {label: c for c, label in enumerate(self._classes)}
        self._k.ensure_classes(len(self._classes) + 1)
        for c, label in enumerate(self._classes):
            wd = m.weights[label]
            keys = list(wd)
            w = self._floats(wd.values())
            mv = np.zeros_like(w)
            vv = np.zeros_like(w)
            opt = m.optimizers.get(label)
            n_iter = 0
            if opt is not None:
                if type(opt) is not type(m.optimizer) or type(opt.n_iterations) is not int:
                    _refuse("a class's optimizer")
                n_iter = opt.n_iterations
                if self._adam and opt.m is not None:
                    mv = self._floats(opt.m.get(key, 0.0) for key in keys)
                    vv = self._floats(opt.v.get(key, 0.0) for key in keys)
            self._k.load_class(c, self._slots(keys), w, mv, vv, n_iter)

    def sync(self) -> None:
        """Write the kernel's state into the River object: afterwards it predicts and
        learns exactly as if it had learned every example itself. Cheap enough for every
        checkpoint (O(state), no arithmetic)."""
        s, k, names = self._spec, self._k, self._names
        if s.scaler is not None:
            (cs, cv), (ms, mv), (vs, vv) = k.scaler()
            sc = s.scaler
            sc.counts = collections.Counter(dict(zip([names[i] for i in cs], cv, strict=True)))
            sc.means = collections.defaultdict(float, zip([names[i] for i in ms], mv, strict=True))
            sc.vars = collections.defaultdict(float, zip([names[i] for i in vs], vv, strict=True))
        if s.onehot is not None:
            zero = s.onehot._zero_dict
            for slot in k.known(self._synced_known):
                zero[names[slot]] = 0
            for pid in k.pairs_learned(self._synced_pairs):
                name, cat = self._pairs[pid]
                s.onehot.values[name].add(cat)
            self._synced_known = k.nK
            self._synced_pairs = k.npairlog
        if s.family == _FAM_SOFTMAX:
            self._sync_softmax()
        else:
            self._sync_glm()

    def _sync_glm(self) -> None:
        m, k, names = self._spec.model, self._k, self._names
        slots, w, mv, vv = k.weights()
        keys = [names[i] for i in slots]
        m._weights = utils.VectorDict(dict(zip(keys, w, strict=True)))
        m.intercept = k.intercept
        m.optimizer.n_iterations = k.n_iter
        if self._adam and (m.optimizer.m is not None or k.n_iter != self._n_iter_loaded):
            m.optimizer.m = utils.VectorDict(dict(zip(keys, mv, strict=True)))
            m.optimizer.v = utils.VectorDict(dict(zip(keys, vv, strict=True)))

    def _sync_softmax(self) -> None:
        m, k, names = self._spec.model, self._k, self._names
        old = dict(m.optimizers)
        m.weights.clear()
        m.optimizers.clear()
        for c in range(k.nC):
            label = self._classes[c]
            slots, w, mv, vv, n_iter = k.klass(c)
            keys = [names[i] for i in slots]
            weights: collections.defaultdict[Hashable, float] = collections.defaultdict(float)
            weights.update(zip(keys, w, strict=True))
            m.weights[label] = weights
            opt = old.get(label)
            if opt is None:
                opt = copy.deepcopy(m.optimizer)
            opt.n_iterations = n_iter
            if self._adam and (opt.m is not None or n_iter > 0):
                opt.m = collections.defaultdict(float, zip(keys, mv, strict=True))
                opt.v = collections.defaultdict(float, zip(keys, vv, strict=True))
            m.optimizers[label] = opt

    @property
    def classes(self) -> tuple[Hashable, ...]:
        """SoftmaxRegression's classes in River's order (empty for the other models)."""
        return tuple(self._classes)
