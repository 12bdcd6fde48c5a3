"""The dashboard's history is a view of the registry: rates, staleness, online vs champion."""

from __future__ import annotations

from prometheus_client import CollectorRegistry

from eddy.streams.observe.dashboard import History
from eddy.streams.observe.metrics import EngineMetrics


def test_history_charts_predictions_ahead_of_learning_and_the_champion_beside_the_online_model():
    registry = CollectorRegistry()
    metrics = EngineMetrics.create(registry)
    history = History(registry)
    history.sample(now=100.0)

    metrics.predictions.labels("cards").inc(300)  # samples served; their labels not in yet
    metrics.learned.labels("cards").inc(100)
    for _ in range(300):
        metrics.staleness.labels("cards").observe(0.02)
    metrics.metric.labels("cards", "accuracy", "rolling").set(0.9)
    metrics.champion_metric.labels("cards", "accuracy", "rolling").set(0.85)
    point = history.sample(now=102.0)

    assert point.predicted_per_s == 150.0
    assert point.learned_per_s == 50.0
    assert abs(point.staleness_s - 0.02) < 1e-9
    assert point.metric == {"cards": 0.9}
    assert point.champion == {"cards": 0.85}
    totals = history.state()["totals"]
    assert totals["predicted"] == 300 and totals["learned"] == 0  # checkpointed count unset


def test_staleness_of_an_interval_without_predictions_is_zero_not_the_old_mean():
    registry = CollectorRegistry()
    metrics = EngineMetrics.create(registry)
    history = History(registry)
    metrics.staleness.labels("s").observe(5.0)
    history.sample(now=1.0)
    assert history.sample(now=2.0).staleness_s == 0.0
