"""Following promotions: the learner continues from a promoted champion where it can.

The follower also keeps what the worker's dashboard and metrics show of the
maintenance loop: every control event's type and time (a bounded list), the
champion of each stream and when it was last exported.

On ``model.promoted`` (alias champion) or ``model.rolled_back`` for a stream this
worker learns, the champion's batch model is loaded from the registry (its
SHA-256 verified) and handed to :func:`eddy.models.adoption.adopt`. Either way the
outcome goes to the maintenance log. Adoption happens between two batches of the
learner, in the same event loop, so no batch sees a half-swapped model.
"""

from __future__ import annotations

import asyncio
import logging
from collections import deque
from dataclasses import dataclass

from aiokafka import TopicPartition

from eddy.models.adoption import adopt
from eddy.models.batch import BatchModel
from eddy.models.registry import Registry, RegistryError
from eddy.streams.agents.learner import LearnerAgent
from eddy.streams.codec import DecodeError, decode_event
from eddy.streams.kafka import close_client, end_offsets, make_consumer
from eddy.streams.metrics import CONTROL_EVENT_TYPES, ModelEventMetrics
from eddy.streams.settings import Settings
from eddy.streams.topics import Topics

log = logging.getLogger(__name__)


@dataclass(frozen=True)
class SeenEvent:
    """A control event as the dashboard shows it."""

    time: float  # unix seconds, when the worker saw it
    type: str
    stream: str
    summary: str


class ChampionFollower:
    """Watches the events topic for new champions of the learner's streams."""

    def __init__(
        self,
        settings: Settings,
        learner: LearnerAgent,
        metrics: ModelEventMetrics | None = None,
        keep: int = 500,
    ) -> None:
        self.settings = settings
        self.learner = learner
        self.metrics = metrics
        self.seen: deque[SeenEvent] = deque(maxlen=keep)
        self._champions: dict[str, str] = {}
        self.registry = Registry(settings.data_dir / "registry")
        self.topic = Topics(settings.topic_prefix).events
        self._stopping = asyncio.Event()
        self.outcomes: list[tuple[str, str, bool, str]] = []  # (stream, version, adopted, why)

    async def run(self) -> None:
        """Follow new events until stopped.

        The last ``keep`` events before the current end are read first, for the
        dashboard and metrics only (nothing is adopted from them); the champions
        are read from the registry, so a restarted worker shows what it did.
        """
        for stream in self.registry.models():
            champion = self.registry.aliases(stream).get("champion")
            if champion is not None:
                self._record("model.promoted", {"model": stream, "version": champion}, None)
        consumer = make_consumer(self.settings, "champions", enable_auto_commit=False)
        await consumer.start()
        try:
            tp = TopicPartition(self.topic, 0)
            consumer.assign([tp])
            end = (await end_offsets(consumer, [tp]))[tp]
            consumer.seek(tp, max(0, end - (self.seen.maxlen or 0)))
            while not self._stopping.is_set():
                batch = await consumer.getmany(tp, timeout_ms=200)
                for record in batch.get(tp, []):
                    self._on_event(record.value, record.timestamp / 1000, record.offset >= end)
        finally:
            await close_client(consumer)

    def _on_event(self, raw: bytes, at: float, act: bool = True) -> None:
        try:
            event = decode_event(
                raw, self.settings.max_message_bytes, self.settings.event_signing_key
            )
        except DecodeError:
            return
        self._record(event.type, event.data, at)
        if not act or event.type not in ("model.promoted", "model.rolled_back"):
            return
        if event.data.get("alias", "champion") != "champion":
            return
        stream, version = event.data["model"], event.data["version"]
        learner = self.learner.stream(stream)
        if learner is None:
            return  # another worker owns this stream
        try:
            v = self.registry.get(stream, version)
            if not self.registry.verify(stream, version).get("model.pt", False):
                msg = f"{stream} {version}/model.pt fails its SHA-256 check"
                raise RegistryError(msg)
            champion = BatchModel.from_bytes(v.artifact("model.pt").read_bytes())
        except RegistryError as ex:
            adopted, why = False, f"not loaded: {ex}"
        else:
            adopted, why = adopt(learner.learner, champion)
        if adopted:
            learner.version = f"{version}-online"
        self.outcomes.append((stream, version, adopted, why))
        self.registry.log("adopt", stream, version, why=f"{event.type} {event.id}",
                          result=("adopted: " if adopted else "kept own: ") + why)  # fmt: skip
        log.info("learner: champion %s of %r: %s", version, stream, why)

    def _record(self, kind: str, data: dict[str, object], at: float | None) -> None:
        """Remember an event seen at ``at`` (unix s; ``None``: state from the registry)."""
        stream = str(data.get("stream") or data.get("model") or "")
        version = data.get("version")
        summary = {
            "drift.detected": f"{data.get('detector')} {data.get('level')}",
            "retrain.requested": f"reason {data.get('reason')}",
            "model.updated": f"{version} promoted={data.get('promoted')}",
            "model.promoted": f"{version} is champion",
            "model.rolled_back": f"back to {version}",
            "model.exported": f"{version} servable={data.get('servable')}",
        }.get(kind, kind)
        if at is not None:
            self.seen.append(SeenEvent(at, kind, stream, summary))
        if self.metrics is None:
            return
        if at is not None:
            self.metrics.events.labels(kind if kind in CONTROL_EVENT_TYPES else "other").inc()
        to_champion = data.get("alias", "champion") == "champion"
        promoted = kind in ("model.promoted", "model.rolled_back") and to_champion
        if promoted and isinstance(version, str):
            old = self._champions.get(stream)
            if old is not None and old != version:  # one series per stream
                self.metrics.champion.remove(stream, old)
            self._champions[stream] = version
            self.metrics.champion.labels(stream, version).set(1)
        if kind == "model.exported" and at is not None:
            self.metrics.exported_at.labels(stream).set(at)

    def stop(self) -> None:
        """Stop following."""
        self._stopping.set()
