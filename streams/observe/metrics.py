"""Prometheus metrics of the streaming side, created against an injected registry.

Names follow Prometheus conventions: prefix ``eddy_``, base units, ``_total`` for
counters, and label sets bounded by eddy's own topic kinds and reason codes (never
event ids or free text).
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

from prometheus_client import (
    REGISTRY,
    CollectorRegistry,
    Counter,
    Gauge,
    Histogram,
    ProcessCollector,
)

_SECONDS = (1e-6, 5e-6, 1e-5, 5e-5, 1e-4, 5e-4, 1e-3, 5e-3, 1e-2, 5e-2, 0.1, 0.5, 1)


@dataclass(frozen=True)
class EngineMetrics:
    """What a worker's partitions do: predictions, joins, learning, drift, dead letters.

    Stream labels are bounded by the worker's stream policy (configured streams, or at
    most ``EDDY_MAX_STREAMS``); feature labels by the feature monitor's ``max_features``.
    """

    predictions: Counter
    staleness: Histogram
    predict_seconds: Histogram
    learned: Counter
    learn_seconds: Histogram
    duplicates: Counter
    drifts: Counter
    feature_drifts: Counter
    feature_drifts_suppressed: Counter
    feature_p_value: Gauge
    unjoined: Counter
    unjoined_state: Gauge
    pending: Gauge
    label_delay: Histogram
    forwarded: Counter
    late: Counter
    dead_lettered: Counter
    examples: Gauge
    metric: Gauge
    champion_metric: Gauge
    model_info: Gauge
    _children: dict[tuple[str, tuple[str, ...]], Any] = field(
        default_factory=dict, init=False, repr=False, compare=False
    )

    def child(self, name: str, *labels: str) -> Any:
        """``<name>.labels(*labels)``, kept: the hot path asks for the same few children
        once per event, and ``labels()`` takes a lock and builds a key every time. For
        series that are never removed (``model_info`` is, so it does not come here)."""
        key = (name, labels)
        found = self._children.get(key)
        if found is None:
            found = self._children[key] = getattr(self, name).labels(*labels)
        return found

    @classmethod
    def create(cls, registry: CollectorRegistry = REGISTRY) -> EngineMetrics:
        """Register the metrics in ``registry`` (pass a fresh one in tests)."""
        return cls(
            predictions=Counter(
                "eddy_predictions",
                "Predictions published when samples arrived.",
                ["stream"],
                registry=registry,
            ),
            staleness=Histogram(
                "eddy_prediction_staleness_seconds",
                "How far behind its stream's learner the model that predicted a sample was "
                "(0: the learner itself; a replica of it in another process otherwise).",
                ["stream"],
                buckets=(0, 0.1, 0.25, 0.5, 1, 2, 5, 10, 30, 60, 300),
                registry=registry,
            ),
            predict_seconds=Histogram(
                "eddy_predict_seconds",
                "Time to predict one sample (batch time / batch size).",
                ["stream"],
                buckets=_SECONDS,
                registry=registry,
            ),
            learned=Counter(
                "eddy_examples_learned", "Examples learned.", ["stream"], registry=registry
            ),
            learn_seconds=Histogram(
                "eddy_learn_seconds",
                "Time to score and learn one example.",
                ["stream"],
                buckets=_SECONDS,
                registry=registry,
            ),
            duplicates=Counter(
                "eddy_examples_duplicate",
                "Examples dropped because their id was already learned (re-sent after a crash).",
                ["stream"],
                registry=registry,
            ),
            drifts=Counter(
                "eddy_drift_signals",
                "Drift detector signals on the error, by level.",
                ["stream", "level"],
                registry=registry,
            ),
            feature_drifts=Counter(
                "eddy_feature_drift_signals",
                "Features (or predictions) whose distribution moved, found at sample time, by "
                "kind: numeric, categorical, missing, prediction.",
                ["stream", "kind"],
                registry=registry,
            ),
            feature_drifts_suppressed=Counter(
                "eddy_feature_drift_suppressed",
                "Feature drift findings not announced because of the stream's cooldown.",
                ["stream"],
                registry=registry,
            ),
            feature_p_value=Gauge(
                "eddy_feature_drift_p_value",
                "p-value of the last drift test of each monitored feature (low: moved).",
                ["stream", "feature", "kind"],
                registry=registry,
            ),
            unjoined=Counter(
                "eddy_join_unmatched",
                "Samples or labels that left the join unmatched, by kind and reason.",
                ["kind", "reason"],
                registry=registry,
            ),
            unjoined_state=Gauge(
                "eddy_join_unmatched_state",
                "Samples or labels that left the join unmatched since its state began, by "
                "reason (kept in the checkpoint, so it survives restarts).",
                ["reason"],
                registry=registry,
            ),
            pending=Gauge(
                "eddy_join_pending",
                "Samples and labels waiting in the join, per partition.",
                ["partition"],
                registry=registry,
            ),
            label_delay=Histogram(
                "eddy_label_delay_seconds",
                "From a sample's event time to its label's arrival at the join.",
                buckets=(0.01, 0.05, 0.1, 0.5, 1, 5, 10, 30, 60, 300, 900, 3600),
                registry=registry,
            ),
            forwarded=Counter(
                "eddy_repartitioned",
                "Records forwarded to the partition that joins or learns them (samples and "
                "labels a non-murmur2 partitioner put elsewhere; examples of streams learned "
                "in another partition).",
                ["kind"],
                registry=registry,
            ),
            late=Counter(
                "eddy_late_events",
                "Records processed behind event time, by topic kind: out_of_order (an event "
                "time below one its topic partition had before) or late (below one the merge "
                "had already released from another input). Both are processed where they "
                "stand, with the state as it is then.",
                ["topic", "kind"],
                registry=registry,
            ),
            dead_lettered=Counter(
                "eddy_dead_letter",
                "Events sent to the dead-letter topic, by source topic kind and reason (every "
                "dead letter, join expirations included).",
                ["topic", "reason"],
                registry=registry,
            ),
            examples=Gauge(
                "eddy_stream_examples",
                "Examples a stream's model has learned since it began (kept in the "
                "checkpoint, so it survives restarts; eddy_examples_learned_total does not).",
                ["stream"],
                registry=registry,
            ),
            metric=Gauge(
                "eddy_prequential_metric",
                "Prequential metrics of the online model on served predictions (cumulative, "
                "rolling; immediate: as if labels came at once).",
                ["stream", "metric", "scope"],
                registry=registry,
            ),
            champion_metric=Gauge(
                "eddy_champion_metric",
                "The champion's (int8) metrics on the same labels, beside the online model's.",
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


@dataclass(frozen=True)
class ConsumerMetrics:
    """What an agent's consumer reads and how far behind it is, per partition."""

    consumed: Counter
    lag: Gauge
    outages: Counter
    kafka_up: Gauge

    @classmethod
    def create(cls, registry: CollectorRegistry = REGISTRY) -> ConsumerMetrics:
        """Register the consumer metrics in ``registry`` (shared by a process's agents)."""
        return cls(
            consumed=Counter(
                "eddy_records_consumed",
                "Records an agent read, by agent and topic.",
                ["agent", "topic"],
                registry=registry,
            ),
            lag=Gauge(
                "eddy_consumer_lag",
                "Records between an agent's next offset and the partition's high watermark.",
                ["agent", "topic", "partition"],
                registry=registry,
            ),
            kafka_up=Gauge(
                "eddy_kafka_up",
                "1 while the process's Kafka cluster answers metadata requests, else 0.",
                registry=registry,
            ),
            outages=Counter(
                "eddy_agent_outage_restarts",
                "Restarts of an agent from its checkpoint after Kafka failed under it.",
                ["agent"],
                registry=registry,
            ),
        )


@dataclass(frozen=True)
class ControlMetrics:
    """What a maintenance consumer (retrainer, exporter) does with control events."""

    handled: Counter
    duration: Histogram
    results: Counter
    size_ratio: Gauge
    accuracy_delta: Gauge

    @classmethod
    def create(cls, registry: CollectorRegistry = REGISTRY) -> ControlMetrics:
        """Register the maintenance metrics in ``registry``."""
        return cls(
            handled=Counter(
                "eddy_control_events_handled",
                "Control events a consumer finished, by outcome: done, skipped, failed, or the "
                "reason it refused one (invalid_json, schema, unsigned, bad_signature).",
                ["consumer", "type", "outcome"],
                registry=registry,
            ),
            duration=Histogram(
                "eddy_maintenance_duration_seconds",
                "Wall time of one retrain or export, from event to durable result.",
                ["consumer"],
                buckets=(0.1, 0.5, 1, 2, 5, 10, 20, 30, 60, 120, 300, 600),
                registry=registry,
            ),
            results=Counter(
                "eddy_maintenance_gate_results",
                "Gate verdicts: retrain promoted/kept_champion, export servable/not_servable.",
                ["consumer", "result"],
                registry=registry,
            ),
            size_ratio=Gauge(
                "eddy_export_size_ratio",
                "fp32/int8 artifact size ratio of the last export, per model.",
                ["model"],
                registry=registry,
            ),
            accuracy_delta=Gauge(
                "eddy_export_accuracy_delta",
                "int8 minus fp32 accuracy (or MAE) on held-out examples, last export.",
                ["model"],
                registry=registry,
            ),
        )


# The control event types eddy knows; anything else is counted as "other".
CONTROL_EVENT_TYPES = (
    "drift.detected",
    "retrain.requested",
    "model.updated",
    "model.promoted",
    "model.rolled_back",
    "model.exported",
)


@dataclass(frozen=True)
class ModelEventMetrics:
    """What a worker sees on the events topic: the champion and its last export."""

    events: Counter
    champion: Gauge
    exported_at: Gauge

    @classmethod
    def create(cls, registry: CollectorRegistry = REGISTRY) -> ModelEventMetrics:
        """Register the model-event metrics in ``registry``."""
        return cls(
            events=Counter(
                "eddy_control_events",
                "Control events seen on the events topic, by type.",
                ["type"],
                registry=registry,
            ),
            champion=Gauge(
                "eddy_champion_info",
                "The champion version of each model stream (value 1; one series per stream).",
                ["stream", "version"],
                registry=registry,
            ),
            exported_at=Gauge(
                "eddy_last_export_timestamp_seconds",
                "Unix time of the last model.exported event per model stream.",
                ["stream"],
                registry=registry,
            ),
        )


def process_metrics(registry: CollectorRegistry) -> None:
    """Register CPU, RSS, open files and start time as ``eddy_process_*``."""
    ProcessCollector(namespace="eddy", registry=registry)
