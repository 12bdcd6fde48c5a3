"""One model stream's learning state: predict when samples arrive, score and learn when
labels do, watch the error for drift.

:class:`StreamLearner` is the whole learning state of one stream (model, metrics,
drift monitor, counters), so checkpointing it with the input offsets it reflects is
one pickle. Its configuration, :class:`StreamSpec`, is not state: a restored learner
is bound to its stream's spec again (:meth:`StreamLearner.bind`).

Delayed-label prequential evaluation: a sample is predicted when it arrives, by the
model as it is then; when its label arrives, that *served* prediction is scored and
the model learns the example. With labels ``d`` samples late this is exactly River's
``progressive_val_score(..., delay=d)``; an example whose served prediction is empty
(the model could not answer yet) is learned but not scored, as River does.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Any, NamedTuple

from eddy.models.catalogue import describe, make_learner
from eddy.models.exceptions import ModelConfigError
from eddy.models.kernels import LEARN, PREDICT
from eddy.models.learners import (
    Features,
    OnlineLearner,
    Prediction,
    Refused,
    RiverLearner,
    TorchModel,
)
from eddy.models.metrics import PrequentialMetrics, metric_names
from eddy.models.monitor.drift import DriftMonitor, DriftSignal

TASKS = ("binary", "multiclass", "regression")


@dataclass(frozen=True)
class StreamSpec:
    """How one stream learns.

    ``model`` is a catalogue name, a River estimator or pipeline, or a ``TorchModel``;
    ``detector`` a name (adwin, page_hinkley, kswin, ddm) or a River drift detector;
    ``metrics`` a subset of the task's metrics (``None``: all of them).
    """

    model: Any = "scaled-logreg"
    task: str = "binary"
    detector: Any = "adwin"
    metrics: tuple[str, ...] | None = None
    drift_min_examples: int = 1000
    drift_cooldown: int = 2000
    metrics_window: int = 1000
    batch_size: int = 256
    score_at_label_time: bool = False
    feature_drift: bool = True  # watch features and predictions at sample time
    feature_drift_retrain: bool = False  # a feature drift also requests a retrain

    def __post_init__(self) -> None:
        if self.task not in TASKS:
            msg = f"task must be one of {', '.join(TASKS)}, got {self.task!r}"
            raise ModelConfigError(msg)
        if self.metrics is not None:
            known = metric_names(self.task)
            unknown = [m for m in self.metrics if m not in known]
            if unknown or not self.metrics:
                msg = f"metrics {unknown or '[]'} are not kept for {self.task}; known: {known}"
                raise ModelConfigError(msg)

    @property
    def model_name(self) -> str:
        """A short name of the model for logs, metrics and cards."""
        return describe(self.model)


class LabelledItem(NamedTuple):
    """An example to learn: features, label, the prediction served for it (``None`` if
    none was), and the caller's reference (to dead-letter it if it is refused)."""

    x: Features
    y: Any
    served: Prediction | None
    ref: Any


class Outcome(NamedTuple):
    """One example's scored prediction and its error (for the drift detector)."""

    prediction: Prediction
    error: float


@dataclass(frozen=True)
class DriftFinding:
    """A drift signal with the metrics over the recent examples that made the detector
    fire ("after") and over the window before them ("before")."""

    signal: DriftSignal
    ref: Any  # the caller's reference of the example that made the detector fire
    metrics_before: dict[str, float | None]
    metrics_after: dict[str, float | None]


@dataclass
class Learned:
    """What :meth:`StreamLearner.learn` did."""

    learned: int = 0
    scored: int = 0
    refused: list[Refused] = field(default_factory=list)
    findings: list[DriftFinding] = field(default_factory=list)

    def add(self, other: Learned) -> None:
        """Count ``other`` in this one (the learning of a later call)."""
        self.learned += other.learned
        self.scored += other.scored
        self.refused += other.refused
        self.findings += other.findings


class Predict(NamedTuple):
    """An operation of :meth:`StreamLearner.apply`: predict a sample."""

    x: Features


class Learn(NamedTuple):
    """An operation of :meth:`StreamLearner.apply`: score ``served`` (a prediction,
    ``None``, or the index of a ``Predict`` earlier in the same call), then learn."""

    x: Features
    y: Any
    served: Prediction | int | None
    ref: Any


class Applied(NamedTuple):
    """What :meth:`StreamLearner.apply` did: the predictions in the order of the
    ``Predict`` operations, how many examples the model had learned when it made each,
    and the learning."""

    predictions: list[Prediction]
    seen: list[int]
    learned: Learned


class StreamLearner:
    """The learning state of one model stream."""

    def __init__(self, stream: str, spec: StreamSpec, version: str = "online-1") -> None:
        self.stream = stream
        self.spec = spec
        self.version = version
        self.learner: OnlineLearner = make_learner(spec.model, spec.task, spec.batch_size)
        self.monitor = DriftMonitor(spec.detector, spec.drift_min_examples, spec.drift_cooldown)
        self.recent_window = self.monitor.recent_window
        self.metrics = PrequentialMetrics(
            spec.task, spec.metrics_window, spec.metrics_window + self.recent_window, spec.metrics
        )
        # What the metric would be with labels at once (a second prediction per example).
        self.immediate: PrequentialMetrics | None = (
            PrequentialMetrics(spec.task, spec.metrics_window, names=spec.metrics)
            if spec.score_at_label_time
            else None
        )
        self.learned = 0
        self.champion: str | None = None  # the last champion the learner was offered

    def __getstate__(self) -> dict[str, Any]:
        return {k: v for k, v in self.__dict__.items() if k != "spec"}

    def __setstate__(self, state: dict[str, Any]) -> None:
        self.__dict__.update(state)
        self.spec = StreamSpec()

    def bind(self, spec: StreamSpec) -> None:
        """Give a restored learner its configuration back (factories are not state)."""
        self.spec = spec
        if isinstance(spec.model, TorchModel):
            self.learner.bind(spec.model)  # type: ignore[attr-defined]

    @property
    def regression(self) -> bool:
        """Whether the stream predicts numbers."""
        return self.spec.task == "regression"

    def predict(self, xs: Sequence[Features]) -> list[Prediction]:
        """Predict samples with the model as it is now (never learns)."""
        return self.learner.predict_many(xs)

    def changes_on_learn(self) -> bool:
        """Whether learning one more example changes what the model predicts."""
        will_step = getattr(self.learner, "will_step", None)
        return will_step(1) if will_step is not None else True

    def learn(self, items: Sequence[LabelledItem]) -> Learned:
        """Learn the examples in order, scoring each served prediction first.

        Examples the learner refuses are returned (and neither scored nor counted); so
        are examples found later to have broken the model.
        """
        out = Learned()
        if not items:
            return out
        learner = self.learner
        to_score: list[LabelledItem] = []
        if learner.per_example:
            for item in items:
                if self.immediate is not None:
                    self._score_immediate(item)
                learner.learn_many((item.x,), (item.y,), (item.ref,))
                refused = learner.take_refused()
                out.refused += refused
                if any(r.ref is item.ref for r in refused):
                    continue
                to_score.append(item)
        else:
            if self.immediate is not None:
                for item in items:
                    self._score_immediate(item)
            learner.learn_many([i.x for i in items], [i.y for i in items], [i.ref for i in items])
            out.refused += learner.take_refused()
            refused_now = {id(r.ref) for r in out.refused}
            to_score = [item for item in items if id(item.ref) not in refused_now]
        self._score(to_score, out)
        out.learned = len(items) - len(out.refused)
        self.learned += out.learned
        return out

    def apply(self, ops: Sequence[Predict | Learn]) -> Applied:
        """Predict and learn in the order given, in one call: each prediction is made by
        the model that learned every example before it in ``ops``, and each example is
        scored (its served prediction) then learned, as :meth:`predict` and :meth:`learn`
        do one at a time. A ``Learn`` may name its served prediction by the index of a
        ``Predict`` earlier in ``ops`` (a sample predicted and labelled in one batch).

        Refused examples are returned as :meth:`learn` returns them, with the examples
        found to have broken the model since the last call.
        """
        learner: Any = self.learner
        if self.immediate is None and getattr(learner, "will_step", None) is not None:
            return self._apply_by_step(ops)
        one_by_one = not (learner.per_example and self.immediate is None)
        if not one_by_one and isinstance(learner, RiverLearner):
            return self._apply_run(learner, ops)
        predictions: list[Prediction] = []
        seen: list[int] = []
        out = Learned()
        failed: set[int] = set()
        for op in ops:
            if type(op) is Predict:
                seen.append(self.learned)
                if one_by_one:
                    predictions.append(self.predict([op.x])[0])
                else:
                    predictions.append(learner.predict_one(op.x))
                continue
            served = op.served
            if type(served) is int:
                served = predictions[served]
            if one_by_one:
                done = self.learn([LabelledItem(op.x, op.y, served, op.ref)])
                out.add(done)  # out.learned is counted once at the end
                failed.update(id(r.ref) for r in done.refused)
            elif learner.learn_one(op.x, op.y, op.ref):
                self.learned += 1
                self._score([LabelledItem(op.x, op.y, served, op.ref)], out)
            else:
                failed.add(id(op.ref))
        refused = learner.take_refused()
        # learned before, found to have broken the model since: no longer counted
        self.learned -= sum(1 for r in refused if id(r.ref) not in failed)
        out.refused += refused
        learned = sum(1 for op in ops if type(op) is Learn)
        out.learned = learned - len(out.refused)
        return Applied(predictions, seen, out)

    def _apply_run(self, learner: RiverLearner, ops: Sequence[Predict | Learn]) -> Applied:
        """:meth:`apply` for a River model: the whole batch in one call of
        :meth:`RiverLearner.run` (its compiled kernel, where the model has one), then
        each example scored in order."""
        kinds = [PREDICT if type(op) is Predict else LEARN for op in ops]
        ys = [None if type(op) is Predict else op.y for op in ops]
        refs = [None if type(op) is Predict else op.ref for op in ops]
        results = learner.run(kinds, [op.x for op in ops], ys, refs)
        predictions: list[Prediction] = []
        seen: list[int] = []
        out = Learned()
        failed: set[int] = set()
        learns = 0
        to_score: list[LabelledItem] = []
        for op, result in zip(ops, results, strict=True):
            if type(op) is Predict:
                seen.append(self.learned)
                predictions.append(result)  # type: ignore[arg-type]
                continue
            learns += 1
            if result:
                self.learned += 1
                served = op.served  # type: ignore[union-attr]
                if type(served) is int:
                    served = predictions[served]
                to_score.append(LabelledItem(op.x, op.y, served, op.ref))  # type: ignore[union-attr, arg-type]
            else:
                failed.add(id(op.ref))  # type: ignore[union-attr]
        self._score(to_score, out)
        refused = learner.take_refused()
        # learned before, found to have broken the model since: no longer counted
        self.learned -= sum(1 for r in refused if id(r.ref) not in failed)
        out.refused += refused
        out.learned = learns - len(out.refused)
        return Applied(predictions, seen, out)

    def _apply_by_step(self, ops: Sequence[Predict | Learn]) -> Applied:
        """:meth:`apply` for a mini-batch learner, whose predictions change only when a
        step is taken: the operations up to the example that takes the next step are one
        chunk, whose samples are predicted in one call and whose examples are learned in
        another. (A step can come later than the learner foresees, when it refuses an
        example: never earlier.)"""
        learner: Any = self.learner
        predictions: list[Prediction] = []
        seen: list[int] = []
        out = Learned()
        start = 0
        while start < len(ops):
            end, learns, xs = start, 0, []
            while end < len(ops):
                op = ops[end]
                end += 1
                if type(op) is Predict:
                    xs.append(op.x)
                    seen.append(self.learned + learns)
                else:
                    learns += 1
                    if learner.will_step(learns):
                        break
            if xs:
                predictions += self.predict(xs)
            items = [
                LabelledItem(
                    op.x,
                    op.y,
                    predictions[op.served] if type(op.served) is int else op.served,
                    op.ref,
                )
                for op in ops[start:end]
                if type(op) is Learn
            ]
            if items:
                out.add(self.learn(items))
            start = end
        return Applied(predictions, seen, out)

    def take_refused(self) -> list[Refused]:
        """Examples found to have broken the model since the last call (by a check at
        prediction time); they no longer count as learned."""
        refused = self.learner.take_refused()
        self.learned -= len(refused)
        return refused

    def _score(self, items: Sequence[LabelledItem], out: Learned) -> None:
        """Score each example's served prediction, in order: the metrics, then the drift
        detector on its error. An example served no prediction is not scored (River's
        rule; it is still learned). The metrics take the examples in batches, cut where
        the detector fires, so a finding's figures are those of the examples up to it."""
        scored = [i for i in items if i.served is not None and not i.served.empty]
        if not scored:
            return
        ys = [i.y for i in scored]
        if self.regression:
            values = [_capped(i.y, i.served.value) for i in scored]  # type: ignore[union-attr]
            errors = [_abs_error(y, v) for y, v in zip(ys, values, strict=True)]
        else:
            values = [i.served.value for i in scored]  # type: ignore[union-attr]
            errors = [float(v != y) for y, v in zip(ys, values, strict=True)]
        probas = [i.served.proba for i in scored]  # type: ignore[union-attr]
        out.scored += len(scored)
        detect = self.monitor.update
        start = 0
        for k, error in enumerate(errors):
            signal = detect(error)
            if signal is not None:
                end = k + 1
                self.metrics.update_many(ys[start:end], values[start:end], probas[start:end])
                start = end
                out.findings.append(self._finding(signal, scored[k].ref))
        self.metrics.update_many(ys[start:], values[start:], probas[start:])

    def _score_immediate(self, item: LabelledItem) -> None:
        assert self.immediate is not None
        now = self.learner.predict_many([item.x])[0]
        if not now.empty:
            value = _capped(item.y, now.value) if self.regression else now.value
            self.immediate.update(item.y, value, now.proba)

    def _finding(self, signal: DriftSignal, ref: Any) -> DriftFinding:
        after = self.metrics.over_last(self.recent_window)
        before = self.metrics.over_last(self.spec.metrics_window, skip=self.recent_window)
        return DriftFinding(signal, ref, before, after)


# A regression error beyond this is scored as this: River's MSE squares errors with
# ``** 2``, which raises OverflowError past ~1.3e154 (a diverging model's finite but huge
# predictions would stop the stream), and ADWIN's sums of squares would overflow too.
ERROR_CAP = 1e100


def _capped(y: Any, y_pred: Any) -> Any:
    """``y_pred``, or ``y`` plus or minus :data:`ERROR_CAP` when it is farther than that."""
    try:
        gap = float(y_pred) - float(y)
    except (TypeError, ValueError):
        return y_pred
    if -ERROR_CAP <= gap <= ERROR_CAP:
        return y_pred
    return float(y) + math.copysign(ERROR_CAP, gap)  # also for an infinite gap


def _abs_error(y: Any, y_pred: Any) -> float:
    try:
        error = abs(float(y) - float(y_pred))
    except (TypeError, ValueError):
        return math.inf
    return error if math.isfinite(error) else math.inf


def label_problem(task: str, label: Any) -> str | None:
    """Why ``label`` cannot be learned for ``task`` (``None`` when it can).

    Binary models learn booleans (0 and 1 count as False and True); regression
    learns numbers; multiclass takes any class (new ones are learned as they come).

    >>> label_problem("binary", True), label_problem("binary", 1), label_problem("binary", "yes")
    (None, None, "binary task: the label must be true/false (or 0/1), got 'yes'")
    >>> label_problem("regression", True)
    'regression task: the label must be a number, got True'
    """
    if task == "binary" and not (isinstance(label, bool) or label in (0, 1)):
        return f"binary task: the label must be true/false (or 0/1), got {label!r}"
    if task == "regression" and (isinstance(label, bool) or not isinstance(label, int | float)):
        return f"regression task: the label must be a number, got {label!r}"
    return None
