"""What a worker follows besides its inputs: the registry (champions) and the events
topic (what the dashboard shows of the maintenance loop).

:class:`RegistryFollower` tails the registry topic into this worker's mirror. For each
stream the worker learns, when the champion alias moves, it loads the champion's int8
model to score it beside the online model on the same labels (:class:`ChampionScorer`)
and lets a PyTorch online model whose layers match continue from the champion's
weights (:func:`eddy.models.maintain.adoption.adopt`); both are recorded in the maintenance
log. The registry, not an event, says what the champion is: events only tell the
dashboard that something happened.
"""

from __future__ import annotations

import asyncio
import logging
from collections import deque
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

from aiokafka import TopicPartition

from eddy.models.maintain.adoption import adopt
from eddy.models.maintain.batch import BatchModel, vectorize
from eddy.models.maintain.export import run, session
from eddy.models.maintain.registry import RegistryError
from eddy.models.metrics import PrequentialMetrics
from eddy.streams.engine.directory import ModelDirectory
from eddy.streams.kafka.clients import assign, close_client, end_offsets, make_consumer
from eddy.streams.observe.metrics import CONTROL_EVENT_TYPES, EngineMetrics, ModelEventMetrics
from eddy.streams.settings import KafkaConfig
from eddy.streams.state.registry_topic import KafkaRegistry
from eddy.streams.wire.codec import DecodeError, decode_event

log = logging.getLogger(__name__)

INT8 = "model.int8.onnx"


@dataclass(frozen=True)
class SeenEvent:
    """A control event as the dashboard shows it."""

    time: float  # unix seconds, when the worker saw it
    type: str
    stream: str
    summary: str


class ChampionScorer:
    """Scores each stream's champion (int8) on the labels the online model learns.

    Examples are collected as they are learned and scored in batches between batches
    of the worker (one ONNX Runtime call per stream), into rolling metrics kept beside
    the online model's.
    """

    def __init__(self, metrics: EngineMetrics, window: int = 1000) -> None:
        self.metrics = metrics
        self.window = window
        self._models: dict[str, tuple[str, Any, list[str], list[Any] | None]] = {}
        self._pending: dict[str, list[tuple[Any, Any]]] = {}
        self.scores: dict[str, PrequentialMetrics] = {}

    def load(self, stream: str, version: str, onnx: bytes, meta: BatchModel, task: str) -> None:
        """Score ``version`` from now on (its metrics start afresh)."""
        self._models[stream] = (version, session(onnx), meta.feature_names, meta.classes)
        self.scores[stream] = PrequentialMetrics(task, self.window)
        self._pending[stream] = []

    def version(self, stream: str) -> str | None:
        """The champion being scored for ``stream``."""
        model = self._models.get(stream)
        return model[0] if model else None

    def add(self, stream: str, features: Any, label: Any) -> None:
        """An example the online model learned (called by the engine)."""
        pending = self._pending.get(stream)
        if pending is not None:
            pending.append((features, label))

    def score(self) -> None:
        """Score what was collected; update the champion gauges."""
        for stream, pending in self._pending.items():
            if not pending:
                continue
            _version, sess, names, classes = self._models[stream]
            self._pending[stream] = []
            matrix = vectorize([x for x, _ in pending], names)[0]
            out = run(sess, matrix)
            scores = self.scores[stream]
            for row, (_, y) in zip(out, pending, strict=True):
                if classes is None:
                    scores.update(y, float(row[0]))
                else:
                    proba = {c: float(p) for c, p in zip(classes, row, strict=True)}
                    scores.update(y, classes[int(row.argmax())], proba)
            for scope in ("cumulative", "rolling"):
                for name, value in scores.values(scope).items():
                    if value is not None:
                        self.metrics.champion_metric.labels(stream, name, scope).set(value)


class RegistryFollower:
    """Tails the registry topic; loads champions of the streams this worker learns."""

    def __init__(
        self,
        registry: KafkaRegistry,
        kafka: KafkaConfig,
        directory: ModelDirectory,
        scorer: ChampionScorer,
        metrics: ModelEventMetrics | None = None,
    ) -> None:
        self.registry = registry
        self.kafka = kafka
        self.directory = directory
        self.scorer = scorer
        self.metrics = metrics
        self.outcomes: list[tuple[str, str, bool, str]] = []  # (stream, version, adopted, why)
        self._champions: dict[str, str] = {}

    async def run(self, stop: asyncio.Event) -> None:
        """Follow until ``stop``; check the owned streams' champions after each change."""
        consumer = make_consumer(
            self.kafka, "registry", enable_auto_commit=False, auto_offset_reset="earliest"
        )
        await consumer.start()
        try:
            await self.check()
            async for _ in self.registry.follow(consumer, stop):
                await self.check()
        finally:
            await close_client(consumer)

    async def check(self) -> None:
        """Load the champion of every owned stream whose champion changed."""
        mirror = self.registry.mirror
        for stream, learner in self.directory.owners().items():
            champion = mirror.aliases(stream).get("champion") if stream in mirror.models() else None
            if champion is None:
                continue
            self._show_champion(stream, champion)
            if self.scorer.version(stream) == champion and learner.champion == champion:
                continue
            try:
                v = mirror.get(stream, champion)
                if not all(mirror.verify(stream, champion).values()):
                    msg = f"{stream} {champion} fails its SHA-256 checks"
                    raise RegistryError(msg)
                meta = BatchModel.from_bytes(v.artifact("model.pt").read_bytes())
            except RegistryError as ex:
                log.warning("champion %s of %r not loaded: %s", champion, stream, ex)
                continue
            gate = v.card.get("export_gate", {})
            if INT8 in v.card.get("artifacts", {}) and gate.get("passed"):
                onnx = v.artifact(INT8).read_bytes()
                self.scorer.load(stream, champion, onnx, meta, learner.spec.task)
            if learner.champion != champion:
                adopted, why = adopt(learner.learner, meta)
                learner.champion = champion
                if adopted:
                    learner.version = f"{champion}-online"
                self.outcomes.append((stream, champion, adopted, why))
                await self.registry.log(
                    "adopt",
                    stream,
                    champion,
                    why="champion alias moved",
                    result=("adopted: " if adopted else "kept own: ") + why,
                )
                log.info("learner: champion %s of %r: %s", champion, stream, why)

    def _show_champion(self, stream: str, version: str) -> None:
        if self.metrics is None or self._champions.get(stream) == version:
            return
        old = self._champions.get(stream)
        if old is not None:
            self.metrics.champion.remove(stream, old)  # one series per stream
        self._champions[stream] = version
        self.metrics.champion.labels(stream, version).set(1)


class EventsFollower:
    """Keeps the last control events for the dashboard, and counts them by type."""

    def __init__(
        self,
        kafka: KafkaConfig,
        topic: str,
        signing_key: bytes | None,
        metrics: ModelEventMetrics | None = None,
        keep: int = 500,
    ) -> None:
        self.kafka = kafka
        self.topic = topic
        self.signing_key = signing_key
        self.metrics = metrics
        self.seen: deque[SeenEvent] = deque(maxlen=keep)
        self.on_event: Callable[[str, dict[str, Any]], None] | None = None

    async def run(self, stop: asyncio.Event) -> None:
        """Read the last ``keep`` events, then follow new ones until ``stop``."""
        consumer = make_consumer(self.kafka, "events", enable_auto_commit=False)
        await consumer.start()
        try:
            tp = TopicPartition(self.topic, 0)
            assign(consumer, [tp])
            end = (await end_offsets(consumer, [tp]))[tp]
            consumer.seek(tp, max(0, end - (self.seen.maxlen or 0)))
            while not stop.is_set():
                batch = await consumer.getmany(tp, timeout_ms=200)
                for record in batch.get(tp, []):
                    self._on_event(record.value, record.timestamp / 1000)
        finally:
            await close_client(consumer)

    def _on_event(self, raw: bytes, at: float) -> None:
        try:
            event = decode_event(raw, 1 << 20, self.signing_key)
        except DecodeError:
            return  # the retrainer dead-letters garbage on the events topic, once
        data = event.data
        stream = str(data.get("stream") or data.get("model") or "")
        version = data.get("version")
        summary = {
            "drift.detected": f"{data.get('detector')} {data.get('level')}",
            "feature_drift.detected": ", ".join(
                f"{f['feature']} ({f['kind']})" for f in data.get("findings", [])[:5]
            ),
            "retrain.requested": f"reason {data.get('reason')}",
            "model.updated": f"{version} promoted={data.get('promoted')}",
            "model.promoted": f"{version} is champion",
            "model.rolled_back": f"back to {version}",
            "model.exported": f"{version} {data.get('variant', 'int8')} "
            f"servable={data.get('servable')}",
            "maintenance.refused": f"{data.get('consumer')}: {str(data.get('reason'))[:80]}",
        }.get(event.type, event.type)
        self.seen.append(SeenEvent(at, event.type, stream, summary))
        if self.metrics is not None:
            kind = event.type if event.type in CONTROL_EVENT_TYPES else "other"
            self.metrics.events.labels(kind).inc()
            if event.type == "model.exported":
                self.metrics.exported_at.labels(stream).set(at)
        if self.on_event is not None:
            self.on_event(event.type, data)
