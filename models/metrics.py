"""Prequential metrics: every example is scored by a model that has not yet learned it.

:class:`PrequentialMetrics` keeps cumulative River metrics for one task, updated
per example, and the last ``window`` scored examples, from which rolling metrics
are computed when asked (a snapshot every few seconds), not per example: River's
``utils.Rolling`` reverts and re-applies every metric on each update, which cost
more than the model itself in eddy's hot path.

Classification: accuracy, F1 (binary; macro-F1 for multi-class), log-loss
(cross-entropy for multi-class) and ROC AUC (binary, rolling only: River's
ROCAUC updates ten confusion matrices per example, and an AUC over a whole
drifting stream says little). Regression: MAE, RMSE, R².
"""

from __future__ import annotations

from collections import deque
from collections.abc import Callable, Iterable
from typing import Any

from river import metrics

TASKS = ("binary", "multiclass", "regression")

Scored = tuple[Any, Any, dict[Any, float] | None]  # (y_true, y_pred, proba)


def metric_names(task: str) -> tuple[str, ...]:
    """The metrics eddy keeps for ``task`` (a stream may keep a subset)."""
    return tuple(_metric_factories(task))


def _metric_factories(task: str) -> dict[str, Callable[[], metrics.base.Metric]]:
    if task == "binary":
        return {
            "accuracy": metrics.Accuracy,
            "f1": metrics.F1,
            "log_loss": metrics.LogLoss,
            "roc_auc": metrics.ROCAUC,
        }
    if task == "multiclass":
        return {
            "accuracy": metrics.Accuracy,
            "f1": metrics.MacroF1,
            "log_loss": metrics.CrossEntropy,
        }
    if task == "regression":
        return {"mae": metrics.MAE, "rmse": metrics.RMSE, "r2": metrics.R2}
    msg = f"unknown task {task!r}; known: {', '.join(TASKS)}"
    raise ValueError(msg)


# Metrics that score probabilities, not labels.
_PROBABILISTIC = {"log_loss", "roc_auc"}
_ROLLING_ONLY = {"roc_auc"}


class MetricSet:
    """One River metric per name for a task, fed (y, y_pred, proba) triples.

    Classification metrics share one confusion matrix, updated once per example.
    ``cumulative=True`` leaves out the rolling-only metrics.
    """

    def __init__(
        self, task: str, cumulative: bool = False, names: tuple[str, ...] | None = None
    ) -> None:
        factories = {
            n: m
            for n, m in _metric_factories(task).items()
            if not (cumulative and n in _ROLLING_ONLY) and (names is None or n in names)
        }
        self._cm = metrics.ConfusionMatrix() if task != "regression" else None
        labelled = [n for n in factories if n not in _PROBABILISTIC]
        if self._cm is not None:
            self._by_label = [factories[n](cm=self._cm) for n in labelled]
        else:
            self._by_label = [factories[n]() for n in labelled]
        self._by_proba = [m() for n, m in factories.items() if n in _PROBABILISTIC]
        self._names = labelled + [n for n in factories if n in _PROBABILISTIC]
        self.n = 0

    def update(self, y_true: Any, y_pred: Any, proba: dict[Any, float] | None) -> None:
        """Score one example (probabilistic metrics only when probabilities exist)."""
        self.n += 1
        if self._cm is not None:
            self._cm.update(y_true, y_pred)
        else:
            for metric in self._by_label:
                metric.update(y_true, y_pred)
        if proba:
            for metric in self._by_proba:
                metric.update(y_true, proba)

    def get(self, name: str) -> metrics.base.Metric:
        """The River metric called ``name``."""
        return (self._by_label + self._by_proba)[self._names.index(name)]

    def values(self) -> dict[str, float | None]:
        """Current values (``None`` until a metric is defined, and with nothing scored)."""
        if not getattr(self, "n", 1):
            return dict.fromkeys(self._names)
        return {
            name: _finite(metric.get())
            for name, metric in zip(self._names, self._by_label + self._by_proba, strict=True)
        }

    @classmethod
    def over(
        cls, task: str, scored: Iterable[Scored], names: tuple[str, ...] | None = None
    ) -> MetricSet:
        """A fresh set fed ``scored``."""
        out = cls(task, names=names)
        for y_true, y_pred, proba in scored:
            out.update(y_true, y_pred, proba)
        return out


class PrequentialMetrics:
    """Cumulative and rolling prequential metrics of one model stream.

    ``update`` takes the true target, the predicted label (or value) and, for
    classifiers, the predicted class probabilities.

    >>> m = PrequentialMetrics("binary", window=2)
    >>> m.update(True, True, {True: 0.9, False: 0.1})
    >>> m.update(False, True, {True: 0.6, False: 0.4})
    >>> m.update(True, True, {True: 0.7, False: 0.3})
    >>> m.values()["accuracy"], m.values("rolling")["accuracy"], m.count
    (0.6666666666666666, 0.5, 3)
    """

    def __init__(
        self,
        task: str,
        window: int = 1000,
        keep: int | None = None,
        names: tuple[str, ...] | None = None,
    ) -> None:
        self.task = task
        self.window = window
        self.names = names
        self.count = 0
        self.cumulative = MetricSet(task, cumulative=True, names=names)
        # Recent scored examples: the rolling window, plus what drift reports look back on.
        self.recent: deque[Scored] = deque(maxlen=max(window, keep or 0))

    def update(self, y_true: Any, y_pred: Any, proba: dict[Any, float] | None = None) -> None:
        """Score one example."""
        self.count += 1
        self.cumulative.update(y_true, y_pred, proba)
        self.recent.append((y_true, y_pred, proba))

    def values(self, which: str = "cumulative") -> dict[str, float | None]:
        """Cumulative values, or rolling ones over the last ``window`` examples."""
        if which == "cumulative":
            return self.cumulative.values()
        return self.over_last(self.window)

    def over_last(self, n: int, skip: int = 0) -> dict[str, float | None]:
        """Metrics over the ``n`` examples before the most recent ``skip`` ones."""
        recent = list(self.recent)
        end = len(recent) - skip
        names = getattr(self, "names", None)
        return MetricSet.over(self.task, recent[max(end - n, 0) : max(end, 0)], names).values()

    def snapshot(self) -> dict[str, Any]:
        """Cumulative and rolling values, and the example count."""
        return {
            "examples": self.count,
            "cumulative": self.values("cumulative"),
            "rolling": self.values("rolling"),
            "window": self.window,
        }


def _finite(value: float) -> float | None:
    value = float(value)
    return value if value == value and abs(value) != float("inf") else None
