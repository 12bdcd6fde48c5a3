"""Following promotions: the learner continues from a promoted champion where it can.

On ``model.promoted`` (alias champion) or ``model.rolled_back`` for a stream this
worker learns, the champion's batch model is loaded from the registry (its
SHA-256 verified) and handed to :func:`models.adoption.adopt`. Either way the
outcome goes to the maintenance log. Adoption happens between two batches of the
learner, in the same event loop, so no batch sees a half-swapped model.
"""

from __future__ import annotations

import asyncio
import logging

from aiokafka import TopicPartition

from models.adoption import adopt
from models.batch import BatchModel
from models.registry import Registry, RegistryError
from streams.agents.learner import LearnerAgent
from streams.codec import DecodeError, decode_event
from streams.kafka import end_offsets, make_consumer
from streams.settings import Settings
from streams.topics import Topics

log = logging.getLogger(__name__)


class ChampionFollower:
    """Watches the events topic for new champions of the learner's streams."""

    def __init__(self, settings: Settings, learner: LearnerAgent) -> None:
        self.settings = settings
        self.learner = learner
        self.registry = Registry(settings.data_dir / "registry")
        self.topic = Topics(settings.topic_prefix).events
        self._stopping = asyncio.Event()
        self.outcomes: list[tuple[str, str, bool, str]] = []  # (stream, version, adopted, why)

    async def run(self) -> None:
        """Follow new events (from the end of the topic) until stopped."""
        consumer = make_consumer(self.settings, "champions", enable_auto_commit=False)
        await consumer.start()
        try:
            tp = TopicPartition(self.topic, 0)
            consumer.assign([tp])
            consumer.seek(tp, (await end_offsets(consumer, [tp]))[tp])
            while not self._stopping.is_set():
                batch = await consumer.getmany(tp, timeout_ms=200)
                for record in batch.get(tp, []):
                    self._on_event(record.value)
        finally:
            await consumer.stop()

    def _on_event(self, raw: bytes) -> None:
        try:
            event = decode_event(raw, self.settings.max_message_bytes)
        except DecodeError:
            return
        if event.type not in ("model.promoted", "model.rolled_back"):
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

    def stop(self) -> None:
        """Stop following."""
        self._stopping.set()
