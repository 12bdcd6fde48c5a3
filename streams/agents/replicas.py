"""Which model predicts a stream's samples: its owner, or a replica of it.

Exactly one worker partition owns (learns) each stream. Samples of the stream that
land in partitions of the same process are predicted by the owner's model itself
(staleness 0). Samples that land in another process are predicted by a *replica*: a
copy of the owner's model that the owner publishes on the snapshots topic whenever it
has changed and the last copy is older than half of ``EDDY_MAX_STALENESS_MS``, so a
replica is at most about that much behind. Snapshots are bounded in size
(``MAX_SNAPSHOT_BYTES``) and rate, sealed (HMAC, :mod:`eddy.models.sealed`) and
chunked; a worker that holds every partition publishes none (no other process needs
them).
"""

from __future__ import annotations

import asyncio
import logging
import time
from typing import Any

import orjson
from aiokafka import AIOKafkaProducer, TopicPartition

from eddy.models.prequential import StreamLearner
from eddy.models.sealed import SealError, seal, unseal
from eddy.streams.engine.directory import ModelDirectory, Replica
from eddy.streams.kafka.clients import assign, close_client, make_consumer
from eddy.streams.settings import KafkaConfig
from eddy.streams.state.chunks import chunk_size, other_slot, send_blob

log = logging.getLogger(__name__)

MAX_SNAPSHOT_BYTES = 64 * 1024 * 1024


class SnapshotPublisher:
    """Publishes the owned streams' models for replicas in other processes."""

    def __init__(self, kafka: KafkaConfig, topic: str, key: bytes, max_staleness_ms: int) -> None:
        self.topic = topic
        self.key = key
        self.every_s = max_staleness_ms / 2000
        self.chunk = chunk_size(kafka.max_message_bytes)
        self._last: dict[str, tuple[float, int]] = {}  # stream -> (when, learned)
        self._slots: dict[str, tuple[str, int]] = {}
        self._too_large: set[str] = set()

    def due(self, owners: dict[str, StreamLearner]) -> list[StreamLearner]:
        """Owned streams whose model changed and whose last snapshot is old enough."""
        now = time.monotonic()
        out = []
        for stream, learner in owners.items():
            when, learned = self._last.get(stream, (0.0, -1))
            if learner.learned != learned and now - when >= self.every_s:
                out.append(learner)
        return out

    async def publish(
        self, producer: AIOKafkaProducer, learner: StreamLearner, lock: asyncio.Lock
    ) -> None:
        """Seal and send one stream's model (skipped, once with a warning, if too large);
        ``lock`` keeps the worker from changing the model while it is pickled."""
        async with lock:
            taken = int(time.time() * 1000)
            self._last[learner.stream] = (time.monotonic(), learner.learned)
            payload = {
                "version": learner.version,
                "learned": learner.learned,
                "taken_at_ms": taken,
                "learner": learner.learner,
            }
            data = await asyncio.to_thread(seal, payload, self.key)
        if len(data) > MAX_SNAPSHOT_BYTES:
            if learner.stream not in self._too_large:
                self._too_large.add(learner.stream)
                log.warning(
                    "stream %r: its model is %d bytes sealed, over the %d-byte snapshot cap; "
                    "other processes keep predicting it with their last copy",
                    learner.stream,
                    len(data),
                    MAX_SNAPSHOT_BYTES,
                )
            return
        last_slot, chunks = self._slots.get(learner.stream, (None, 0))
        slot = other_slot(last_slot)
        manifest = await send_blob(
            producer, self.topic, 0, f"s/{learner.stream}", data, self.chunk, slot, chunks
        )
        self._slots[learner.stream] = (slot, len(manifest["chunks"]))


class ReplicaFollower:
    """Reads the snapshots topic and installs replicas of streams owned elsewhere."""

    def __init__(
        self, kafka: KafkaConfig, topic: str, key: bytes, directory: ModelDirectory
    ) -> None:
        self.kafka = kafka
        self.topic = topic
        self.key = key
        self.directory = directory
        self._chunks: dict[bytes, tuple[int, bytes]] = {}
        self.installed = 0
        self.refused = 0

    async def run(self, stop: asyncio.Event) -> None:
        """Follow the topic from its start until ``stop``."""
        consumer = make_consumer(
            self.kafka, "replicas", enable_auto_commit=False, auto_offset_reset="earliest"
        )
        await consumer.start()
        try:
            tp = TopicPartition(self.topic, 0)
            assign(consumer, [tp])
            consumer.seek(tp, 0)
            while not stop.is_set():
                batch = await consumer.getmany(tp, timeout_ms=200, max_records=2000)
                for record in batch.get(tp, []):
                    await self._apply(record)
        finally:
            await close_client(consumer)

    async def _apply(self, record: Any) -> None:
        key = record.key or b""
        if key.count(b"/") >= 3:  # a chunk: s/<stream>/<slot>/<i>
            if record.value is None:
                self._chunks.pop(key, None)
            else:
                self._chunks[key] = (record.offset, record.value)
            return
        if not key.startswith(b"s/") or record.value is None:
            return
        try:
            manifest = orjson.loads(record.value)
            prefix = f"{manifest['name']}/{manifest['slot']}/"
            pieces = []
            for i, offset in enumerate(manifest["chunks"]):
                found = self._chunks.get(f"{prefix}{i}".encode())
                if found is None or found[0] != offset:
                    return  # chunks of this snapshot not read (compacted): wait for the next
                pieces.append(found[1])
            snapshot = await asyncio.to_thread(
                unseal, b"".join(pieces), self.key, f"snapshot {manifest['name']}"
            )
        except (orjson.JSONDecodeError, KeyError, TypeError, SealError) as ex:
            self.refused += 1
            log.warning("replicas: snapshot %s refused: %s", key.decode(errors="replace"), ex)
            return
        stream = key.decode()[2:]
        replica = Replica(
            stream,
            snapshot["version"],
            snapshot["learned"],
            snapshot["taken_at_ms"],
            snapshot["learner"],
        )
        if self.directory.install(replica):
            self.installed += 1
