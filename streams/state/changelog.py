"""Partition state on a compacted changelog topic; local files are only a cache.

A worker partition's state (join buffer, stream learners, feature monitors, dedup
ids, input offsets) is sealed (pickled, compressed, HMAC-authenticated: see
:mod:`eddy.models.sealed`) and sent to partition ``p`` of the changelog topic in
chunks with a manifest (:mod:`eddy.streams.state.chunks`), so whichever machine is
assigned partition ``p`` next restores it from Kafka. A copy goes to
``<data dir>/checkpoints/<group>/p<p>.ckpt``; on restore the copy is used when it is
the checkpoint the changelog's last manifest names (same SHA-256), which saves
reading it back.

Restore takes the newest checkpoint that verifies: the changelog's last manifest,
then older ones (their chunks survive until compaction), then the local copy, then
none (the partition starts afresh). A checkpoint that fails its HMAC is never
unpickled: it is refused with a warning naming it.
"""

from __future__ import annotations

import asyncio
import logging
import pickle
from pathlib import Path
from typing import Any

import orjson
from aiokafka import AIOKafkaProducer, TopicPartition

from eddy.models import checkpoint
from eddy.models.sealed import SealError, seal_pickled, unseal
from eddy.streams.engine.checkpoint import Checkpoint
from eddy.streams.exceptions import BrokerError
from eddy.streams.kafka.clients import close_client, end_offsets, make_consumer
from eddy.streams.settings import KafkaConfig
from eddy.streams.state.chunks import (
    chunk_size,
    fetch_blob,
    latest_manifests,
    other_slot,
    send_blob,
)
from eddy.streams.state.store import Restored

log = logging.getLogger(__name__)

NAME = "state"


class Changelog:
    """Checkpoints of one consumer group's partitions on ``topic``: the worker's
    :class:`~eddy.streams.state.store.PartitionStore`, writing with ``producer`` (a
    reader that only restores needs none)."""

    def __init__(
        self,
        kafka: KafkaConfig,
        topic: str,
        key: bytes,
        cache_dir: Path,
        group: str,
        producer: AIOKafkaProducer | None = None,
    ) -> None:
        self.kafka = kafka
        self.producer = producer
        self.topic = topic
        self.key = key
        self.cache_dir = cache_dir
        self.group = group
        self.chunk_bytes = chunk_size(kafka.max_message_bytes)
        self._slots: dict[int, tuple[str, int]] = {}  # partition -> (last slot, its chunks)
        self._chunks_in: dict[tuple[int, str], int] = {}  # (partition, slot) -> chunks

    def cache_path(self, partition: int) -> Path:
        """The local copy of a partition's last checkpoint."""
        return self.cache_dir / f"p{partition}.ckpt"

    @staticmethod
    async def snapshot(checkpoint: Checkpoint) -> bytes:
        """``checkpoint`` pickled: it may change once this returns. Only the pickle waits
        for the caller (the agent holds its lock meanwhile); compressing and signing
        are done by :meth:`write`."""
        return await asyncio.to_thread(pickle.dumps, checkpoint, pickle.HIGHEST_PROTOCOL)

    def revoke(self, partition: int) -> None:
        """Forget which slot ``partition`` wrote last: its next owner reads it back."""
        self._slots.pop(partition, None)

    async def write(self, partition: int, snapshot: bytes, generation: int) -> None:
        """Seal a :meth:`snapshot` and write it to the changelog, then the cache; returns
        once the broker has acknowledged every record. One write per partition at a
        time (the two slots alternate)."""
        if self.producer is None:
            msg = "this Changelog was made to read only: give it a producer to write"
            raise RuntimeError(msg)
        data = await asyncio.to_thread(seal_pickled, snapshot, self.key)
        slot = other_slot(self._slots.get(partition, (None, 0))[0])
        previous = self._chunks_in.get((partition, slot), 0)
        manifest = await send_blob(
            self.producer,
            self.topic,
            partition,
            NAME,
            data,
            self.chunk_bytes,
            slot,
            previous,
            {"generation": generation, "group": self.group},
        )
        self._slots[partition] = (slot, len(manifest["chunks"]))
        self._chunks_in[(partition, slot)] = len(manifest["chunks"])
        await asyncio.to_thread(self._write_cache, partition, data, manifest)
        log.debug(
            "checkpointed partition %d (%d bytes, generation %d)",
            partition,
            manifest["size"],
            generation,
        )

    def _write_cache(self, partition: int, data: bytes, manifest: dict[str, Any]) -> None:
        checkpoint.write_atomic(self.cache_path(partition), data)
        checkpoint.write_atomic(
            self.cache_path(partition).with_suffix(".json"), orjson.dumps(manifest)
        )

    async def assign(self, partition: int) -> Restored | None:
        """The newest checkpoint of ``partition`` that verifies and this eddy can read,
        or ``None``."""
        tp = TopicPartition(self.topic, partition)
        consumer = make_consumer(
            self.kafka, "restore", enable_auto_commit=False, auto_offset_reset="earliest"
        )
        await consumer.start()
        try:
            end = (await end_offsets(consumer, [tp]))[tp]
            manifests = await latest_manifests(consumer, tp, NAME, end) if end else []
            cached = self._read_cache_manifest(partition)
            for manifest in manifests:
                restored = await self._from_manifest(consumer, tp, partition, manifest, cached)
                if restored is not None:
                    self._remember_slot(partition, manifest)
                    return restored
        finally:
            await close_client(consumer)
        if cached is not None:
            try:
                state = await asyncio.to_thread(
                    checkpoint.load, self.cache_path(partition), self.key
                )
            except (OSError, SealError) as ex:
                log.warning("checkpoint cache of partition %d refused: %s", partition, ex)
            else:
                log.warning(
                    "partition %d: the changelog %s holds no usable checkpoint; restored the "
                    "local copy (generation %s)",
                    partition,
                    self.topic,
                    cached.get("generation"),
                )
                restored = _restored(state, int(cached.get("generation", 0)), "cache")
                if restored is not None:
                    return restored
        return None

    async def _from_manifest(
        self,
        consumer: Any,
        tp: TopicPartition,
        partition: int,
        manifest: dict[str, Any],
        cached: dict[str, Any] | None,
    ) -> Restored | None:
        where = f"changelog {self.topic}[{partition}]@{manifest.get('offset')}"
        generation = int(manifest.get("generation", 0))
        if cached is not None and cached.get("sha256") == manifest.get("sha256"):
            try:
                state = await asyncio.to_thread(
                    checkpoint.load, self.cache_path(partition), self.key
                )
                restored = _restored(state, generation, f"{where} (local copy)")
                if restored is not None:
                    return restored
            except (OSError, SealError) as ex:
                log.warning(
                    "partition %d: local copy refused (%s); reading the changelog", partition, ex
                )
        try:
            data = await fetch_blob(consumer, tp, manifest)
            state = await asyncio.to_thread(unseal, data, self.key, where)
        except (BrokerError, SealError, KeyError, TypeError) as ex:
            log.warning(
                "partition %d: checkpoint at %s refused (%s); trying an older one",
                partition,
                where,
                ex,
            )
            return None
        return _restored(state, generation, where)

    def _read_cache_manifest(self, partition: int) -> dict[str, Any] | None:
        path = self.cache_path(partition).with_suffix(".json")
        try:
            manifest = orjson.loads(path.read_bytes())
        except (OSError, orjson.JSONDecodeError):
            return None
        return manifest if isinstance(manifest, dict) else None

    def _remember_slot(self, partition: int, manifest: dict[str, Any]) -> None:
        slot = manifest.get("slot")
        if slot in ("a", "b"):
            self._slots[partition] = (slot, len(manifest.get("chunks", [])))
            self._chunks_in[(partition, slot)] = len(manifest.get("chunks", []))
            # The other slot may hold more chunks than we know: a tombstone too many is
            # harmless, a stale chunk left behind wastes space until overwritten.
            self._chunks_in.setdefault((partition, other_slot(slot)), 64)


def _restored(obj: object, generation: int, where: str) -> Restored | None:
    """``obj`` as a restored checkpoint, or ``None`` (with a warning) if it is none this
    eddy can read."""
    try:
        if not isinstance(obj, Checkpoint):
            msg = f"it holds a {type(obj).__name__}, not a checkpoint"
            raise ValueError(msg)
        return Restored(obj.check(), generation, where)
    except ValueError as ex:
        log.warning("checkpoint at %s refused (%s); trying an older one", where, ex)
        return None
