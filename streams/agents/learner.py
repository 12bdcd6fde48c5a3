"""The learner agent: examples → test-then-train → predictions, metrics, drift events.

Examples are keyed by model stream, so one partition holds all of a stream's
examples in order, and exactly one learner owns each stream's state. An example
whose id was already learned (the join re-sends what it emitted after its last
checkpoint when it restarts) is dropped and counted.
"""

from __future__ import annotations

import logging
import time
import uuid
from dataclasses import dataclass, field
from typing import Any

import orjson
from aiokafka import AIOKafkaProducer, ConsumerRecord

from eddy.models.join import RecentIds
from eddy.models.prequential import (
    DriftFinding,
    LearnerConfig,
    Outcome,
    StreamLearner,
    label_problem,
)
from eddy.streams.agents.base import PartitionedAgent
from eddy.streams.codec import Example, decode_example, make_event, now_ms
from eddy.streams.deadletter import DeadLetterQueue
from eddy.streams.exceptions import UnlearnableLabel
from eddy.streams.metrics import ConsumerMetrics, LearnerMetrics
from eddy.streams.settings import Settings
from eddy.streams.topics import Topics

log = logging.getLogger(__name__)


@dataclass
class LearnerState:
    """One examples partition: its streams' learners and the offset they reflect."""

    streams: dict[str, StreamLearner] = field(default_factory=dict)
    offset: int = 0
    recent: RecentIds = field(default_factory=lambda: RecentIds(200_000))
    duplicates: int = 0


class LearnerAgent(PartitionedAgent[LearnerState]):
    """Prequential learning on the examples topic."""

    name = "learner"

    def __init__(
        self,
        settings: Settings,
        producer: AIOKafkaProducer,
        dlq: DeadLetterQueue,
        metrics: LearnerMetrics,
        config: LearnerConfig,
        publish_predictions: bool = True,
        consumer_metrics: ConsumerMetrics | None = None,
    ) -> None:
        self.t = Topics(settings.topic_prefix)
        super().__init__(settings, producer, [self.t.examples], consumer_metrics)
        self.dlq = dlq
        self.metrics = metrics
        self.config = config
        self.publish_predictions = publish_predictions
        self.source = f"eddy/{settings.topic_prefix}learner"
        self._last_snapshot = time.monotonic()
        self._info: dict[str, tuple[str, str, str]] = {}

    def new_state(self, partition: int) -> LearnerState:
        """No streams yet; read the partition from the start."""
        return LearnerState(recent=RecentIds(self.settings.dedup_horizon))

    def offsets_of(self, state: LearnerState) -> dict[str, int]:
        """Next offset of the examples partition."""
        return {self.t.examples: state.offset}

    def set_offset(self, state: LearnerState, topic: str, offset: int) -> None:
        """Read the examples partition from ``offset`` next."""
        state.offset = offset

    def stream(self, name: str) -> StreamLearner | None:
        """The learner of stream ``name``, if this worker owns it."""
        for state in self.states.values():
            if name in state.streams:
                return state.streams[name]
        return None

    async def process(self, partition: int, records: dict[str, list[ConsumerRecord]]) -> None:
        """Test then train on a batch of one examples partition, stream by stream."""
        batch = records[self.t.examples]
        state = self.states[partition]
        max_bytes = self.settings.max_message_bytes
        decoded = await self.dlq.decode_all(batch, lambda raw: decode_example(raw, max_bytes))
        groups: dict[str, list[tuple[ConsumerRecord, Example]]] = {}
        for record, example in decoded:
            problem = label_problem(self.config.task, example.label)
            if problem is not None:
                await self.dlq.send(record, UnlearnableLabel(problem))
                continue
            if example.id in state.recent:
                state.duplicates += 1
                self.metrics.duplicates.labels(example.stream).inc()
                continue
            state.recent.add(example.id)
            groups.setdefault(example.stream, []).append((record, example))
        for name, items in groups.items():
            learner = state.streams.get(name)
            if learner is None:
                learner = state.streams[name] = StreamLearner(name, self.config)
                log.info(
                    "learner: new stream %r (%s, %s)", name, self.config.model, self.config.task
                )
            size = len(items) if learner.learner.per_example else self.settings.batch_size
            for start in range(0, len(items), size):
                await self._learn(learner, items[start : start + size])
        state.offset = batch[-1].offset + 1

    async def _learn(
        self, learner: StreamLearner, items: list[tuple[ConsumerRecord, Example]]
    ) -> None:
        xs = [e.features for _, e in items]
        ys = [e.label for _, e in items]
        predict_before = learner.learner.predict_seconds
        started = time.perf_counter()
        outcomes, findings = learner.process(xs, ys)
        elapsed = time.perf_counter() - started
        n = len(items)
        stream = learner.stream
        self.metrics.learned.labels(stream).inc(n)
        self.metrics.learn_latency.labels(stream).observe(elapsed / n)
        predicted = learner.learner.predict_seconds - predict_before
        self.metrics.predict_latency.labels(stream).observe(predicted / n)
        if self.publish_predictions:
            await self._publish_predictions(learner, items, outcomes)
        for finding in findings:
            record, example = items[finding.index]
            await self._publish_drift(learner, finding, record, example)

    async def _publish_predictions(
        self,
        learner: StreamLearner,
        items: list[tuple[ConsumerRecord, Example]],
        outcomes: list[Outcome],
    ) -> None:
        ts = now_ms()
        send = self.sender.send
        topic = self.t.predictions
        # A stream's predictions share its examples' partition: no per-record hashing.
        for (record, example), outcome in zip(items, outcomes, strict=True):
            event: dict[str, Any] = {
                "id": example.id,
                "stream": learner.stream,
                "model_version": learner.version,
                "prediction": outcome.prediction.value,
                "ts": ts,
            }
            if outcome.prediction.proba:
                event["proba"] = outcome.prediction.proba
            await send(
                topic,
                orjson.dumps(event, option=orjson.OPT_NON_STR_KEYS),
                key=example.id.encode(),
                partition=record.partition,
            )

    async def _publish_drift(
        self,
        learner: StreamLearner,
        finding: DriftFinding,
        record: ConsumerRecord,
        example: Example,
    ) -> None:
        signal = finding.signal
        self.metrics.drifts.labels(learner.stream, signal.level).inc()
        position = {
            "partition": record.partition,
            "offset": record.offset,
            "sample_count": signal.count,
        }
        log.info(
            "learner: %s %s on stream %r at example %d (%s[%d]@%d)",
            signal.detector, signal.level, learner.stream, signal.count,
            record.topic, record.partition, record.offset,
        )  # fmt: skip
        drift = make_event(
            "drift.detected",
            self.source,
            {
                "stream": learner.stream,
                "model_version": learner.version,
                "detector": signal.detector,
                "level": signal.level,
                "position": position,
                "metrics_before": finding.metrics_before,
                "metrics_after": finding.metrics_after,
            },
            subject=learner.stream,
            event_id=self._event_id("drift", learner.stream, signal.level, signal.count),
            signing_key=self.settings.event_signing_key,
        )
        await self._send_event(learner.stream, drift)
        if signal.level != "drift":
            return
        retrain = make_event(
            "retrain.requested",
            self.source,
            {
                "stream": learner.stream,
                "reason": "drift",
                "trigger_event_id": drift["id"],
                "position": position,
            },
            subject=learner.stream,
            event_id=self._event_id("retrain", learner.stream, signal.level, signal.count),
            signing_key=self.settings.event_signing_key,
        )
        await self._send_event(learner.stream, retrain)

    def _event_id(self, kind: str, stream: str, level: str, count: int) -> str:
        # Deterministic: a replay after a crash re-sends the same id, which
        # consumers drop by (source, id).
        return str(uuid.uuid5(uuid.NAMESPACE_URL, f"{self.source}/{kind}/{stream}/{level}/{count}"))

    async def _send_event(self, stream: str, event: dict[str, Any]) -> None:
        await self.sender.send(self.t.events, orjson.dumps(event), key=stream.encode())

    async def on_idle(self) -> None:
        """Publish metric snapshots every ``metrics_interval_s``."""
        if time.monotonic() - self._last_snapshot < self.settings.metrics_interval_s:
            return
        self._last_snapshot = time.monotonic()
        await self.publish_snapshots()

    async def publish_snapshots(self) -> None:
        """One metric snapshot per stream, to the metrics topic and the gauges."""
        for state in self.states.values():
            for name, learner in state.streams.items():
                snapshot = learner.metrics.snapshot()
                self.metrics.examples.labels(name).set(snapshot["examples"])
                for scope in ("cumulative", "rolling"):
                    for metric, value in snapshot[scope].items():
                        if value is not None:
                            self.metrics.metric.labels(name, metric, scope).set(value)
                info = (name, self.config.model, learner.version)
                previous = self._info.get(name)
                if previous is not None and previous != info:  # one series per stream
                    self.metrics.model_info.remove(*previous)
                self._info[name] = info
                self.metrics.model_info.labels(*info).set(1)
                event = {"stream": name, "model_version": learner.version, "ts": now_ms()}
                event |= snapshot
                await self.sender.send(self.t.metrics, orjson.dumps(event), key=name.encode())
