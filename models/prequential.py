"""Test-then-train for one model stream: predict, score, learn, watch for drift.

:class:`StreamLearner` is the whole learning state of one model stream (model,
metrics, drift monitor, counters), so that checkpointing it together with the
input offsets it reflects is one pickle.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field
from typing import Any, NamedTuple

from eddy.models.drift import DriftMonitor, DriftSignal
from eddy.models.learners import Features, OnlineLearner, Prediction, make_learner
from eddy.models.metrics import PrequentialMetrics


@dataclass
class LearnerConfig:
    """How a stream learns: model, task, drift detection and metric window."""

    model: str = "scaled-logreg"
    task: str = "binary"
    params: dict[str, Any] = field(default_factory=dict)
    detector: str = "adwin"
    drift_min_examples: int = 1000
    drift_cooldown: int = 2000
    metrics_window: int = 1000


class Outcome(NamedTuple):
    """One example's prediction (made before learning it) and its error."""

    prediction: Prediction
    error: float


@dataclass(frozen=True)
class DriftFinding:
    """A drift signal with the metrics over the recent examples that made the detector
    fire ("after") and over the window before them ("before")."""

    signal: DriftSignal
    index: int  # position of the triggering example in the batch
    metrics_before: dict[str, float | None]
    metrics_after: dict[str, float | None]


class StreamLearner:
    """The learning state of one model stream."""

    def __init__(self, stream: str, config: LearnerConfig, version: str = "online-1") -> None:
        self.stream = stream
        self.config = config
        self.version = version
        self.learner: OnlineLearner = make_learner(config.model, config.task, config.params)
        self.monitor = DriftMonitor(
            config.detector, config.drift_min_examples, config.drift_cooldown
        )
        self.recent_window = self.monitor.recent_window
        self.metrics = PrequentialMetrics(
            config.task, config.metrics_window, keep=config.metrics_window + self.recent_window
        )
        self.learned = 0

    def process(
        self, xs: list[Features], ys: list[Any]
    ) -> tuple[list[Outcome], list[DriftFinding]]:
        """Test then train on a mini-batch; return per-example outcomes and drift findings."""
        predictions = self.learner.test_then_train(xs, ys)
        outcomes: list[Outcome] = []
        findings: list[DriftFinding] = []
        regression = self.config.task == "regression"
        for i, (y, p) in enumerate(zip(ys, predictions, strict=True)):
            self.metrics.update(y, p.value, p.proba)
            error = _abs_error(y, p.value) if regression else float(p.value != y)
            outcomes.append(Outcome(p, error))
            signal = self.monitor.update(error)
            if signal is not None:
                findings.append(self._finding(signal, i))
        self.learned += len(xs)
        return outcomes, findings

    def _finding(self, signal: DriftSignal, index: int) -> DriftFinding:
        after = self.metrics.over_last(self.recent_window)
        before = self.metrics.over_last(self.config.metrics_window, skip=self.recent_window)
        return DriftFinding(signal, index, before, after)


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
