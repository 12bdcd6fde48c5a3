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

from collections import Counter, deque
from collections.abc import Callable, Iterable, Sequence
from typing import Any

import numpy as np
from river import metrics

from eddy.models.kernels import _stats

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

    def update_many(
        self,
        y_true: Sequence[Any],
        y_pred: Sequence[Any],
        proba: Sequence[dict[Any, float] | None],
    ) -> None:
        """Score examples in order: the River metrics end exactly as :meth:`update` one
        example at a time leaves them (the same dict orders, the same floats).

        The confusion matrix takes counts (its cells are whole numbers, so any order
        adds them exactly); running means and variances run River's own update, in
        order, compiled (``eddy.models.kernels._stats``). A metric of another kind (none of
        eddy's) is updated one example at a time.
        """
        n = len(y_true)
        if n == 0:
            return
        self.n += n
        if self._cm is not None:
            _count(self._cm, y_true, y_pred)
        elif self._by_label:
            ys = np.array(y_true, dtype=np.float64)
            ps = np.array(y_pred, dtype=np.float64)
            for metric in self._by_label:
                _regression_many(metric, y_true, y_pred, ys, ps)
        if self._by_proba:
            kept = [i for i in range(n) if proba[i]]
            if kept:
                ys_kept = [y_true[i] for i in kept]
                probas = [proba[i] for i in kept]
                for metric in self._by_proba:
                    _probabilistic_many(metric, ys_kept, probas)

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

    def update_many(
        self,
        y_true: Sequence[Any],
        y_pred: Sequence[Any],
        proba: Sequence[dict[Any, float] | None],
    ) -> None:
        """Score examples in order (as many :meth:`update` calls, in one)."""
        self.count += len(y_true)
        self.cumulative.update_many(y_true, y_pred, proba)
        self.recent.extend(zip(y_true, y_pred, proba, strict=True))

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


def _count(cm: metrics.ConfusionMatrix, y_true: Sequence[Any], y_pred: Sequence[Any]) -> None:
    """``cm.update(t, p)`` for each pair, by counts. Pairs are counted in order of first
    appearance, so every dict of the matrix gains its keys in the order one-by-one
    updates would add them (the first time a class appears as truth, as prediction, or
    in a pair); counts are whole numbers, exact in floating point in any order."""
    pairs = Counter(zip(y_true, y_pred, strict=True))
    data, rows, cols = cm.data, cm.sum_row, cm.sum_col
    hits = 0
    for (t, p), k in pairs.items():
        w = float(k)
        data[t][p] += w
        rows[t] += w
        cols[p] += w
        if t == p:
            hits += k
    cm.n_samples += len(y_true)
    cm.total_weight += float(len(y_true))
    if hits:
        cm._total_true_positives += float(hits)


def _regression_many(
    metric: Any, y_true: Sequence[Any], y_pred: Sequence[Any], ys: Any, ps: Any
) -> None:
    kind = type(metric)
    if kind is metrics.MAE:
        mean = metric._mean
        mean.n, mean._mean = _stats.mean_abs_error(mean.n, mean._mean, ys, ps)
    elif kind is metrics.RMSE or kind is metrics.MSE:
        mean = metric._mean
        mean.n, mean._mean = _stats.mean_squared_error(mean.n, mean._mean, ys, ps, 2.0)
    elif kind is metrics.R2:
        var = metric._y_var
        var.mean.n, var.mean._mean, var._S = _stats.variance(var.mean.n, var.mean._mean, var._S, ys)
        metric._residual_sum_of_squares = _stats.residual_sum(
            metric._residual_sum_of_squares, ys, ps
        )
    else:
        for t, p in zip(y_true, y_pred, strict=True):
            metric.update(t, p)


def _probabilistic_many(metric: Any, y_true: list[Any], probas: list[dict[Any, float]]) -> None:
    kind = type(metric)
    if kind is metrics.LogLoss:
        p_true = np.array([p.get(True, 0.0) for p in probas], dtype=np.float64)
        truth = np.array([bool(t) for t in y_true], dtype=np.uint8)
        mean = metric._mean
        mean.n, mean._mean = _stats.mean_log_loss(mean.n, mean._mean, p_true, truth)
    elif kind is metrics.CrossEntropy:
        found = [p.get(t) for t, p in zip(y_true, probas, strict=True)]
        has = np.array([f is not None for f in found], dtype=np.uint8)
        p_true = np.array([0.0 if f is None else f for f in found], dtype=np.float64)
        mean = metric._mean
        mean.n, mean._mean = _stats.mean_cross_entropy(mean.n, mean._mean, p_true, has)
    else:
        for t, p in zip(y_true, probas, strict=True):
            metric.update(t, p)


def _finite(value: float) -> float | None:
    value = float(value)
    return value if value == value and abs(value) != float("inf") else None
