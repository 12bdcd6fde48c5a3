"""Prequential metrics: every example is scored by a model that has not yet learned it.

:class:`PrequentialMetrics` keeps cumulative and rolling-window River metrics for
one task. Classification: accuracy, F1 (binary; macro-F1 for multi-class),
log-loss (cross-entropy for multi-class) and ROC AUC (binary). Regression: MAE,
RMSE and R².
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

from river import metrics, utils

TASKS = ("binary", "multiclass", "regression")


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


class PrequentialMetrics:
    """Cumulative and rolling prequential metrics of one model stream.

    ``update`` takes the true target, the predicted label (or value) and, for
    classifiers, the predicted class probabilities.

    >>> m = PrequentialMetrics("binary", window=2)
    >>> m.update(True, True, {True: 0.9, False: 0.1})
    >>> m.update(False, True, {True: 0.6, False: 0.4})
    >>> m.snapshot()["cumulative"]["accuracy"], m.count
    (0.5, 2)
    """

    def __init__(self, task: str, window: int = 1000) -> None:
        factories = _metric_factories(task)
        self.task = task
        self.window = window
        self.count = 0
        self.cumulative = {name: make() for name, make in factories.items()}
        self.rolling = {
            name: utils.Rolling(make, window_size=window) for name, make in factories.items()
        }

    def update(self, y_true: Any, y_pred: Any, proba: dict[Any, float] | None = None) -> None:
        """Score one example."""
        self.count += 1
        for family in (self.cumulative, self.rolling):
            for name, metric in family.items():
                if name in _PROBABILISTIC:
                    if proba:
                        metric.update(y_true, proba)
                else:
                    metric.update(y_true, y_pred)

    def values(self, which: str = "cumulative") -> dict[str, float | None]:
        """Current values (``None`` until a metric is defined)."""
        family = self.cumulative if which == "cumulative" else self.rolling
        return {name: _finite(metric.get()) for name, metric in family.items()}

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
