"""Online learners behind one interface: what a stream's learner is, and the River
learner with its guard.

:class:`OnlineLearner` is what the rest of eddy asks of a model; :class:`RiverLearner`
runs a River estimator or pipeline behind it, :class:`~eddy.models.torch_learner.TorchLearner`
a PyTorch model described by a :class:`TorchModel`. Which one a stream gets, and the
catalogue of named models, is :mod:`eddy.models.catalogue`.

The guard: an example whose learning raises, or that leaves the model predicting
non-finite values, is refused (returned as :class:`Refused` with a reason code) and the
model keeps its state from before that example. River learners keep a *safe point* (a
pickle of the model, refreshed every few hundred examples) and the examples learned
since; a failure restores the safe point and re-learns those examples without the
culprit. Learning is deterministic, so the result is exactly the model that would have
learned every other example.

The compiled path: a River linear model that :func:`~eddy.models.kernels.compile_river`
recognises (logistic, linear and softmax regression, alone or behind a standard scaler
and one-hot encoder) is predicted and learned by its compiled kernel, bit for bit what
River computes, over a whole batch at a time (:meth:`RiverLearner.run`). The River
object stays the truth: the kernel's state is written into it before anything reads it
(a pickle for a checkpoint, a snapshot or an export; River's own path), and read back
after River changed it. An op the kernel cannot take exactly (a non-finite result, an
input River would refuse) goes through River's guarded path, one example.
"""

from __future__ import annotations

import contextlib
import math
import pickle
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import Any, NamedTuple, Protocol

import numpy as np

from eddy.models.kernels import LEARN, PREDICT, CompiledLinear, compile_river
from eddy.models.kernels.columns import columns_of

Features = dict[Any, Any] | list[float]

# Reason codes of refused examples (dead-letter reasons, documented in the README).
LEARN_ERROR = "learn_error"  # learning the example raised
NON_FINITE = "non_finite"  # learning the example left the model with non-finite outputs


class Prediction(NamedTuple):
    """A prediction: the label (or value) and, for classifiers, class probabilities.

    ``value`` is ``None`` when the model cannot predict yet (nothing learned); such a
    prediction is not scored, as River's ``progressive_val_score`` does not score it.
    """

    value: Any
    proba: dict[Any, float] | None = None

    @property
    def empty(self) -> bool:
        """No answer: nothing to score (River's rule: ``None`` or ``{}``)."""
        return self.value is None


class Refused(NamedTuple):
    """An example the learner did not learn, with a reason code and a message."""

    ref: Any  # what the caller passed with the example (to dead-letter it)
    reason: str
    message: str


class OnlineLearner(Protocol):
    """What the learner agent needs of a model."""

    task: str
    per_example: bool  # learns each example on its own (River) or in mini-batches (torch)
    predict_seconds: float  # time spent predicting so far (for latency metrics)

    def predict_many(self, xs: Sequence[Features]) -> list[Prediction]:
        """Predict with the current state; never learns."""
        ...

    def learn_many(self, xs: Sequence[Features], ys: Sequence[Any], refs: Sequence[Any]) -> None:
        """Learn the examples in order; refused ones are collected for :meth:`take_refused`."""
        ...

    def take_refused(self) -> list[Refused]:
        """Examples refused since the last call (by learning, or found by a later check)."""
        ...


def as_dict(x: Features) -> dict[Any, Any]:
    """River wants dicts: a dense vector becomes ``{0: x0, 1: x1, …}``."""
    return x if isinstance(x, dict) else dict(enumerate(x))


def finite_prediction(p: Prediction) -> bool:
    """Whether a prediction holds only finite numbers (labels may be anything)."""
    if p.proba:
        return all(isinstance(v, float | int) and math.isfinite(v) for v in p.proba.values())
    if isinstance(p.value, float):
        return math.isfinite(p.value)
    return True


def finite_numbers(obj: Any, limit: int = 200_000) -> set[str]:
    """Paths of the finite floats in an object's state (for the guard's repair only:
    a number finite before learning an example and not after marks the culprit).

    >>> sorted(finite_numbers({"w": {"a": 1.0, "b": float("nan")}, "n": [2.0]}))
    ["['n'][0]", "['w']['a']"]
    """
    found: set[str] = set()
    seen: set[int] = set()
    stack: list[tuple[str, Any]] = [("", obj)]
    while stack and len(seen) < limit:
        path, value = stack.pop()
        if isinstance(value, float):
            if math.isfinite(value):
                found.add(path)
            continue
        if isinstance(value, str | bytes | int | type(None)) or id(value) in seen:
            continue
        seen.add(id(value))
        if hasattr(value, "dtype") and hasattr(value, "tolist"):  # a numpy array
            values = value.tolist()
            stack.append((path, values if isinstance(values, list) else [values]))
        elif isinstance(value, dict):
            stack.extend((f"{path}[{k!r}]", v) for k, v in value.items())
        elif isinstance(value, list | tuple):
            stack.extend((f"{path}[{i}]", v) for i, v in enumerate(value))
        elif hasattr(value, "items") and callable(value.items):  # River's VectorDict and kin
            with contextlib.suppress(TypeError):
                stack.extend((f"{path}[{k!r}]", v) for k, v in value.items())
        elif hasattr(value, "__dict__"):
            stack.extend((f"{path}.{k}", v) for k, v in vars(value).items())
    return found


class RiverLearner:
    """A River estimator behind eddy's interface; predictions equal River's own.

    For classifiers the label is ``max(proba, key=proba.get)``, which is what
    River's ``Classifier.predict_one`` returns, so probabilities and label come from
    one call. See the module docstring for the guard.
    """

    per_example = True
    # Safe points: at least this many examples apart, and far enough apart that
    # pickling the model costs about 2% of learning time.
    SAFE_MIN = 64
    SAFE_MAX = 20_000
    SAFE_SHARE = 0.02
    # A call into the kernel costs a fixed ~80 µs (columns, labels, arrays) and then ~2 µs
    # an op; River ~20 µs an op. Fewer ops than this go River's way while the River
    # object holds the state (nothing to write back), so one-at-a-time callers keep
    # River's speed and a stream that switches does so once, not per call.
    KERNEL_MIN_OPS = 6

    def __init__(self, task: str, estimator: Any) -> None:
        self.task = task
        self._estimator = estimator
        self._classifier = task != "regression"
        self.predict_seconds = 0.0
        self._init_guard()
        self._init_kernel()

    def _init_guard(self) -> None:
        self._safe: bytes | None = None
        self._replay: list[tuple[Any, Any, Any]] = []
        self._safe_every = self.SAFE_MIN
        self._learn_seconds = 0.0
        self._refused: list[Refused] = []

    def _init_kernel(self) -> None:
        try:
            self._kernel: CompiledLinear | None = compile_river(self._estimator, self.task)
        except ValueError:  # a state the kernel cannot continue exactly: River's own path
            self._kernel = None
        self._kernel_ahead = False  # the kernel learned what the River object has not yet
        self._river_ahead = False  # River's own path changed the object since the kernel read it

    @property
    def compiled(self) -> bool:
        """Whether a compiled kernel predicts and learns this model (see the module)."""
        return self._kernel is not None

    # The guard's buffers and the kernel are not state: the synced River object is; a
    # restored learner takes a fresh safe point and compiles its kernel again.
    def __getstate__(self) -> dict[str, Any]:
        self._to_river()
        return {"task": self.task, "estimator": self._estimator}

    def __setstate__(self, state: dict[str, Any]) -> None:
        self.task = state["task"]
        self._estimator = state["estimator"]
        self._classifier = self.task != "regression"
        self.predict_seconds = 0.0
        self._init_guard()
        self._init_kernel()

    # -- who holds the state: the kernel or the River object ----------------------------------

    def sync(self) -> None:
        """Write what the compiled kernel learned into the River object (``estimator``):
        afterwards it is exactly the model River would have learned."""
        if self._kernel_ahead:
            assert self._kernel is not None
            self._kernel.sync()
            self._kernel_ahead = False
            # The guard's safe point predates what the kernel learned: take a fresh one.
            self._safe = None
            self._replay = []

    def _to_river(self) -> None:
        """Make the River object current (before River's own path or a pickle reads it)."""
        self.sync()
        if self._kernel is not None:
            self._river_ahead = True  # River's path may change it from here on

    def _to_kernel(self) -> CompiledLinear | None:
        """The kernel, holding the River object's state (``None``: River's path only)."""
        kernel = self._kernel
        if kernel is None or (not self._river_ahead and kernel.estimator is self._estimator):
            return kernel
        self._river_ahead = False
        try:
            return self._read_into_kernel(kernel)
        except ValueError:
            # An example River learned broke the model (the kernel stops before such an
            # example and leaves it to River): the guard finds and refuses it, as it
            # would at the next prediction.
            self._repair()
        try:
            return self._read_into_kernel(kernel)
        except ValueError:  # a state River made so by itself: River's path from now on
            self._kernel = None
            return None

    def _read_into_kernel(self, kernel: CompiledLinear) -> CompiledLinear | None:
        """``kernel`` after reading the River object (a new kernel if the guard replaced
        the object since); ValueError if its state cannot be continued exactly."""
        if kernel.estimator is self._estimator:
            kernel.reload()
            return kernel
        self._kernel = compile_river(self._estimator, self.task)
        return self._kernel

    @property
    def estimator(self) -> Any:
        """The River model, current: what the compiled kernel learned is written into it
        first, and what is done to it is read back before the kernel goes on."""
        self._to_river()
        return self._estimator

    def _predict(self, x: dict[Any, Any]) -> Prediction:
        if self._classifier:
            proba = self._estimator.predict_proba_one(x)
            return Prediction(max(proba, key=proba.get) if proba else None, proba)
        return Prediction(self._estimator.predict_one(x))

    def predict_many(self, xs: Sequence[Features]) -> list[Prediction]:
        """Predict without learning; a non-finite answer triggers the guard's repair."""
        if self._kernel is not None:
            return self.run([PREDICT] * len(xs), xs, None, None)  # type: ignore[return-value]
        started = time.perf_counter()
        out = [self._predict_guarded(as_dict(x)) for x in xs]
        self.predict_seconds += time.perf_counter() - started
        return out

    def run(
        self,
        kinds: Sequence[int],
        xs: Sequence[Features],
        ys: Sequence[Any] | None,
        refs: Sequence[Any] | None,
    ) -> list[Prediction | bool]:
        """Predict and learn in the order given: ``kinds[i]`` is ``PREDICT`` (predict
        ``xs[i]``) or ``LEARN`` (learn ``xs[i]`` with label ``ys[i]``, ``refs[i]`` naming
        it if it is refused). Returns per op its :class:`Prediction`, or whether the
        example was learned (``False``: refused, see :meth:`take_refused`); each
        prediction is made by the model that learned every example before it here.

        What :meth:`predict_one` and :meth:`learn_one` would give op by op: the compiled
        kernel runs the batch where the model has one, River the ops it stops at.
        """
        n = len(kinds)
        out: list[Prediction | bool] = [False] * n
        small = n < self.KERNEL_MIN_OPS and not self._kernel_ahead
        kernel = None if small else self._to_kernel()
        if kernel is None:
            for i in range(n):
                out[i] = self._river_op(kinds[i], xs[i], ys, refs, i)
            return out
        started = time.perf_counter()
        ops = np.asarray(kinds, dtype=np.int8)
        columns = columns_of(xs)
        labels = ys if ys is not None else [None] * n
        start = 0
        while start < n:
            kernel = self._to_kernel()
            if kernel is None:  # River's state could not be read back: River from here
                self.predict_seconds += time.perf_counter() - started
                rest = self.run(kinds[start:], xs[start:], _tail(ys, start), _tail(refs, start))
                out[start:] = rest
                return out
            applied = kernel.apply(
                ops[start:], columns, np.arange(start, n, dtype=np.int64), labels[start:]
            )
            if applied.done and (ops[start : start + applied.done] == LEARN).any():
                self._kernel_ahead = True
            predicted = applied.river_all()
            for k, at in enumerate(applied.predicted.tolist()):
                out[start + at] = self._prediction(predicted[k])
            for at in np.flatnonzero(ops[start : start + applied.done] == LEARN).tolist():
                out[start + at] = True
            if applied.stopped_at is None:
                break
            i = start + applied.stopped_at  # River's turn, one op
            out[i] = self._river_op(kinds[i], xs[i], ys, refs, i)
            start = i + 1
        self.predict_seconds += time.perf_counter() - started
        return out

    def _river_op(
        self,
        kind: int,
        x: Features,
        ys: Sequence[Any] | None,
        refs: Sequence[Any] | None,
        i: int,
    ) -> Prediction | bool:
        """Op ``i`` of a :meth:`run`, on River's own guarded path."""
        if kind == PREDICT:
            return self.predict_one(x)
        assert ys is not None and refs is not None
        return self.learn_one(x, ys[i], refs[i])

    def _prediction(self, river: Any) -> Prediction:
        """eddy's prediction from River's answer (as :meth:`_predict` makes it)."""
        if self._classifier:
            return Prediction(max(river, key=river.get) if river else None, river)
        return Prediction(river)

    def _predict_guarded(self, xd: dict[Any, Any]) -> Prediction:
        try:
            p = self._predict(xd)
        except Exception:  # noqa: BLE001 - a broken model state; repaired below
            p = Prediction(math.nan)
        if not finite_prediction(p):
            self._repair()
            p = self._predict_or_none(xd)
        return p

    def _predict_or_none(self, x: dict[Any, Any]) -> Prediction:
        try:
            p = self._predict(x)
        except Exception:  # noqa: BLE001 - the model cannot answer for this input
            return Prediction(None, {} if self._classifier else None)
        return p if finite_prediction(p) else Prediction(None, {} if self._classifier else None)

    def learn_many(self, xs: Sequence[Features], ys: Sequence[Any], refs: Sequence[Any]) -> None:
        """Learn each example in order; one that raises is refused and undone."""
        if self._kernel is not None:
            self.run([LEARN] * len(xs), xs, ys, refs)
            return
        started = time.perf_counter()
        for x, y, ref in zip(xs, ys, refs, strict=True):
            self._learn_guarded(as_dict(x), y, ref)
        self._learn_seconds += time.perf_counter() - started

    def predict_one(self, x: Features) -> Prediction:
        """Predict one example with River itself (guarded as :meth:`predict_many`)."""
        self._to_river()
        return self._predict_guarded(as_dict(x))

    def learn_one(self, x: Features, y: Any, ref: Any) -> bool:
        """Learn one example with River itself (guarded as :meth:`learn_many`);
        ``False`` if refused."""
        self._to_river()
        started = time.perf_counter()
        learned = self._learn_guarded(as_dict(x), y, ref)
        self._learn_seconds += time.perf_counter() - started
        return learned

    def _learn_guarded(self, xd: dict[Any, Any], y: Any, ref: Any) -> bool:
        if self._safe is None or len(self._replay) >= self._safe_every:
            self._take_safe_point()
        try:
            self._estimator.learn_one(xd, y)
        except Exception as ex:  # noqa: BLE001 - whatever the model raises is this example's
            self._restore([])
            self._refused.append(Refused(ref, LEARN_ERROR, f"{type(ex).__name__}: {ex}"))
            return False
        self._replay.append((xd, y, ref))
        return True

    def take_refused(self) -> list[Refused]:
        """Examples refused since the last call."""
        out, self._refused = self._refused, []
        return out

    # -- the guard ---------------------------------------------------------------------------

    def _take_safe_point(self) -> None:
        # Check the recent examples first: a model already broken must not become the
        # point every later failure returns to.
        if self._safe is not None and not all(
            finite_prediction(self._predict_or_nan(x)) for x, _, _ in self._replay[-8:]
        ):
            self._repair()
        started = time.perf_counter()
        self._safe = pickle.dumps(self._estimator, protocol=pickle.HIGHEST_PROTOCOL)
        spent = time.perf_counter() - started
        if self._replay and self._learn_seconds > 0:
            per_example = self._learn_seconds / max(len(self._replay), 1)
            wanted = spent / (self.SAFE_SHARE * per_example)
            self._safe_every = int(min(self.SAFE_MAX, max(self.SAFE_MIN, wanted)))
        self._replay = []
        self._learn_seconds = 0.0

    def _predict_or_nan(self, x: dict[Any, Any]) -> Prediction:
        try:
            return self._predict(x)
        except Exception:  # noqa: BLE001 - counts as a broken model
            return Prediction(math.nan)

    def _restore(self, skip: list[int]) -> None:
        """Back to the safe point, then re-learn the examples since (except ``skip``)."""
        assert self._safe is not None
        self._estimator = pickle.loads(self._safe)
        kept = [item for i, item in enumerate(self._replay) if i not in skip]
        for x, y, _ in kept:
            self._estimator.learn_one(x, y)
        self._replay = kept

    def _repair(self) -> None:
        """The model answers with non-finite values: find the examples since the safe
        point that caused it, refuse them, and rebuild the model without them.

        An example is a culprit when learning it raises, turns a finite number of the
        model's state into a non-finite one (the poison may show in predictions only
        later), or leaves its own prediction non-finite.
        """
        if self._safe is None:
            return
        culprits: list[int] = []
        self._estimator = pickle.loads(self._safe)
        for i, (x, y, ref) in enumerate(self._replay):
            before = pickle.dumps(self._estimator, protocol=pickle.HIGHEST_PROTOCOL)
            finite_before = finite_numbers(self._estimator)
            try:
                self._estimator.learn_one(x, y)
                ok = finite_prediction(self._predict(x)) and not (
                    finite_before - finite_numbers(self._estimator)
                )
            except Exception:  # noqa: BLE001 - counts as non-finite
                ok = False
            if not ok:
                culprits.append(i)
                self._estimator = pickle.loads(before)
                self._refused.append(
                    Refused(ref, NON_FINITE, "learning it left the model with non-finite outputs")
                )
        self._replay = [item for i, item in enumerate(self._replay) if i not in set(culprits)]


def _tail(items: Sequence[Any] | None, start: int) -> Sequence[Any] | None:
    return None if items is None else items[start:]


@dataclass(frozen=True)
class TorchModel:
    """A PyTorch model for a stream, learned by mini-batch SGD on standardized features.

    ``module(n_features, n_outputs)`` builds your ``nn.Module`` (``None``: eddy's own
    linear model, or an MLP with one ``hidden`` layer, that grows as features and
    classes appear). ``optimizer(parameters)`` builds your optimizer (``None``: plain
    SGD with ``lr`` and ``weight_decay``); ``loss(outputs, targets)`` is your loss
    (``None``: cross-entropy for classes, MSE for regression). With your own module,
    the input columns are the features of the first mini-batch (sorted; text features
    one-hot as ``name=value``) and the classes are ``classes`` (binary: False, True);
    later new features are ignored and unknown classes refused. Factories are
    configuration, not state: they are not checkpointed, so give the same ones to
    every worker (module-level functions, as for any model eddy pickles).
    """

    module: Callable[[int, int], Any] | None = None
    hidden: int = 0
    optimizer: Callable[[Any], Any] | None = None
    loss: Callable[[Any, Any], Any] | None = None
    lr: float = 0.05
    weight_decay: float = 0.0
    seed: int = 42
    classes: tuple[Any, ...] | None = None
