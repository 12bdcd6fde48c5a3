"""Prometheus metrics of the streaming side, created against an injected registry.

Names follow Prometheus conventions: prefix ``eddy_``, base units, ``_total`` for
counters, and label sets bounded by eddy's own topic kinds and reason codes (never
event ids or free text).
"""

from __future__ import annotations

from dataclasses import dataclass

from prometheus_client import REGISTRY, CollectorRegistry, Counter, Gauge, Histogram


@dataclass(frozen=True)
class EdgeMetrics:
    """Counters of what the edge decoders accept and dead-letter."""

    decoded: Counter
    dead_lettered: Counter

    @classmethod
    def create(cls, registry: CollectorRegistry = REGISTRY) -> EdgeMetrics:
        """Register the counters in ``registry`` (pass a fresh one in tests)."""
        return cls(
            decoded=Counter(
                "eddy_events_decoded",
                "Events that passed decoding and schema validation.",
                ["topic"],
                registry=registry,
            ),
            dead_lettered=Counter(
                "eddy_dead_letter",
                "Events sent to the dead-letter topic, by source topic kind and reason.",
                ["topic", "reason"],
                registry=registry,
            ),
        )


@dataclass(frozen=True)
class JoinMetrics:
    """What the join does: joins, what leaves unjoined and why, what waits."""

    joined: Counter
    unjoined: Counter
    pending: Gauge
    label_delay: Histogram

    @classmethod
    def create(cls, registry: CollectorRegistry = REGISTRY) -> JoinMetrics:
        """Register the join's metrics in ``registry``."""
        return cls(
            joined=Counter(
                "eddy_join_examples", "Samples joined with their label.", registry=registry
            ),
            unjoined=Counter(
                "eddy_join_unmatched",
                "Samples or labels that left the join unmatched, by kind and reason.",
                ["kind", "reason"],
                registry=registry,
            ),
            pending=Gauge(
                "eddy_join_pending", "Samples and labels waiting in the join.", registry=registry
            ),
            label_delay=Histogram(
                "eddy_label_delay_seconds",
                "From a sample's event time to its label's arrival at the join.",
                buckets=(0.01, 0.05, 0.1, 0.5, 1, 5, 10, 30, 60, 300, 900, 3600),
                registry=registry,
            ),
        )


@dataclass(frozen=True)
class LearnerMetrics:
    """What the learner does, per model stream (a bounded, configured set)."""

    learned: Counter
    duplicates: Counter
    predict_latency: Histogram
    learn_latency: Histogram
    drifts: Counter
    metric: Gauge
    model_info: Gauge

    @classmethod
    def create(cls, registry: CollectorRegistry = REGISTRY) -> LearnerMetrics:
        """Register the learner's metrics in ``registry``."""
        seconds = (1e-6, 5e-6, 1e-5, 5e-5, 1e-4, 5e-4, 1e-3, 5e-3, 1e-2, 5e-2, 0.1, 0.5, 1)
        return cls(
            learned=Counter(
                "eddy_examples_learned", "Examples learned.", ["stream"], registry=registry
            ),
            duplicates=Counter(
                "eddy_examples_duplicate",
                "Examples dropped because their id was already learned (re-sent after a crash).",
                ["stream"],
                registry=registry,
            ),
            predict_latency=Histogram(
                "eddy_predict_seconds",
                "Time to predict one example (batch time / batch size).",
                ["stream"],
                buckets=seconds,
                registry=registry,
            ),
            learn_latency=Histogram(
                "eddy_learn_seconds",
                "Time to test-then-train one example (batch time / batch size).",
                ["stream"],
                buckets=seconds,
                registry=registry,
            ),
            drifts=Counter(
                "eddy_drift_signals",
                "Drift detector signals, by level (warning or drift).",
                ["stream", "level"],
                registry=registry,
            ),
            metric=Gauge(
                "eddy_prequential_metric",
                "Prequential metrics (cumulative and rolling).",
                ["stream", "metric", "scope"],
                registry=registry,
            ),
            model_info=Gauge(
                "eddy_model_info",
                "The model version learning each stream (value 1).",
                ["stream", "model", "version"],
                registry=registry,
            ),
        )
