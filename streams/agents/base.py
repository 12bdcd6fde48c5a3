"""What every eddy agent shares: a consumer group, per-partition state checkpointed
together with the offsets it reflects, and a batch loop.

Delivery contract: an agent's state for a partition is saved atomically with the
next offset to read (see :mod:`eddy.models.checkpoint`), and only after everything the
agent produced from those records is acknowledged by the broker. On start and on
every reassignment the state is restored and consumption resumes at the saved
offset, so each input record changes the state exactly once, across crashes;
outputs are at-least-once, and downstream drops repeats by id.

Records are fetched in batches (``getmany``), never one by one: per-record
dispatch is what limits faust agents here (see bench/README.md).

Outages: when Kafka fails under an agent (a produce is not acknowledged, a
broker goes away), the agent drops its in-memory state, waits (1 s doubling to
30 s) and restarts from its last checkpoint, so nothing unacknowledged is
counted as done; it logs each attempt and when it has resumed. A checkpoint
also records the position, timestamp and key hash of the last record it
reflects per topic: if that record is not there any more on restore (the topic
was recreated, e.g. a memory-only broker restarted), the agent keeps its learned
state and reads the new topic from its start instead of seeking past new data.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import re
import time
import zlib
from abc import ABC, abstractmethod
from collections.abc import Iterable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Generic, TypeVar

from aiokafka import AIOKafkaConsumer, AIOKafkaProducer, ConsumerRecord, TopicPartition
from aiokafka.abc import ConsumerRebalanceListener
from aiokafka.coordinator.assignors.range import RangePartitionAssignor
from aiokafka.errors import KafkaError

from eddy.models import checkpoint
from eddy.streams.kafka import close_client, end_offsets, getmany_until, make_consumer
from eddy.streams.metrics import ConsumerMetrics
from eddy.streams.sender import BatchSender
from eddy.streams.settings import Settings

log = logging.getLogger(__name__)

S = TypeVar("S")

BACKOFF_FIRST_S = 1.0
BACKOFF_MAX_S = 30.0
COMMIT_TIMEOUT_S = 5.0

# (offset, timestamp, crc32 of the key) of the last record a checkpoint reflects.
Position = tuple[int, int, int]


@dataclass
class Checkpointed(Generic[S]):
    """What a checkpoint file holds: the state and the last record it reflects per topic."""

    state: S
    positions: dict[str, Position] = field(default_factory=dict)


def position_of(record: ConsumerRecord) -> Position:
    """A record's identity as a checkpoint remembers it."""
    return (record.offset, record.timestamp, zlib.crc32(record.key or b""))


class PartitionedAgent(ABC, Generic[S]):
    """Consumes ``topics`` in group ``group``; keeps one state ``S`` per partition number.

    Partitions with the same number across ``topics`` share one state (the
    range assignor hands them to the same member), which is what the join needs.
    Subclasses implement :meth:`new_state`, :meth:`offsets_of` and :meth:`process`.
    """

    name = "agent"

    def __init__(
        self,
        settings: Settings,
        producer: AIOKafkaProducer,
        topics: list[str],
        consumer_metrics: ConsumerMetrics | None = None,
    ) -> None:
        self.settings = settings
        self.consumer_metrics = consumer_metrics
        self._last_lag = 0.0
        self.producer = producer
        self.topics = topics
        self.group = f"{settings.topic_prefix}{self.name}"
        self.states: dict[int, S] = {}
        self._since_checkpoint: dict[int, int] = {}
        self._last_checkpoint = time.monotonic()
        self._stopping = asyncio.Event()
        self._failure: BaseException | None = None
        self.sender = BatchSender(producer)
        self.consumer: AIOKafkaConsumer | None = None
        self.ready = asyncio.Event()  # set once partitions are assigned and restored
        self._positions: dict[int, dict[str, Position]] = {}
        self.outages = 0  # restarts from a checkpoint after a Kafka failure
        self._recovering = False

    # -- to implement ------------------------------------------------------------------------

    @abstractmethod
    def new_state(self, partition: int) -> S:
        """The state of a partition that has no checkpoint."""

    @abstractmethod
    def offsets_of(self, state: S) -> dict[str, int]:
        """``{topic: next offset to read}`` recorded in ``state``."""

    @abstractmethod
    def set_offset(self, state: S, topic: str, offset: int) -> None:
        """Make ``state`` read ``topic`` from ``offset`` next (after a topic was recreated)."""

    @abstractmethod
    async def process(self, partition: int, records: dict[str, list[ConsumerRecord]]) -> None:
        """Handle a batch of one partition's records, by topic; update its state."""

    async def on_idle(self) -> None:
        """Called between batches (timers: expiry, metric snapshots)."""

    # -- checkpoints -------------------------------------------------------------------------

    def checkpoint_path(self, partition: int) -> Path:
        """Where a partition's state lives."""
        safe = re.sub(r"[^A-Za-z0-9._-]", "_", self.group)
        return self.settings.data_dir / "checkpoints" / safe / f"p{partition}.ckpt"

    async def save(self, partitions: Iterable[int]) -> None:
        """Flush outputs, then checkpoint the given partitions' states."""
        partitions = [p for p in partitions if p in self.states]
        if not partitions:
            return
        await self.sender.flush()  # outputs of these records are durable first
        for p in partitions:
            saved = Checkpointed(self.states[p], dict(self._positions.get(p, {})))
            size = await asyncio.to_thread(checkpoint.save, self.checkpoint_path(p), saved)
            self._since_checkpoint[p] = 0
            log.debug("%s: checkpointed partition %d (%d bytes)", self.name, p, size)
        self._last_checkpoint = time.monotonic()
        if self.consumer is not None:  # informational: lag tools read committed offsets
            offsets = {
                TopicPartition(t, p): o
                for p in partitions
                for t, o in self.offsets_of(self.states[p]).items()
                if TopicPartition(t, p) in self.consumer.assignment()
            }
            if offsets:
                try:
                    # Bounded: aiokafka retries a commit for as long as the group has no
                    # coordinator, which would hold up a shutdown indefinitely.
                    await asyncio.wait_for(self.consumer.commit(offsets), COMMIT_TIMEOUT_S)
                except Exception as ex:  # noqa: BLE001 - commits are advisory here
                    log.debug(
                        "%s: commit failed (%r); the checkpoint holds the offsets", self.name, ex
                    )

    async def _restore(self, partitions: set[int]) -> None:
        assert self.consumer is not None
        for p in sorted(partitions):
            path = self.checkpoint_path(p)
            if path.exists():
                saved = await asyncio.to_thread(checkpoint.load, path)
                if not isinstance(saved, Checkpointed):  # written before positions existed
                    saved = Checkpointed(saved)
                state, positions = saved.state, dict(saved.positions)
                for topic in await self._recreated(p, positions):
                    log.warning(
                        "%s: %s[%d] is not the partition the checkpoint was taken on (the "
                        "topic was recreated, or the broker lost its data): keeping the "
                        "learned state, reading the partition from its start",
                        self.name, topic, p,
                    )  # fmt: skip
                    self.set_offset(state, topic, 0)
                    positions.pop(topic, None)
                offsets = self.offsets_of(state)
                for topic in self.topics:
                    self.consumer.seek(TopicPartition(topic, p), offsets.get(topic, 0))
                log.info("%s: partition %d restored, resuming at %s", self.name, p, offsets)
            else:
                state, positions = self.new_state(p), {}
                await self._seek_start(p)
            # Only now, with no await in between: the loop sees a partition whole or not at all.
            self.states[p], self._positions[p], self._since_checkpoint[p] = state, positions, 0

    async def _recreated(self, partition: int, positions: dict[str, Position]) -> list[str]:
        """Topics whose last checkpointed record is no longer where it was."""
        if not positions:
            return []
        consumer = make_consumer(
            self.settings, "verify", enable_auto_commit=False, auto_offset_reset="earliest"
        )
        await consumer.start()
        changed = []
        try:
            for topic, (offset, timestamp, key_crc) in positions.items():
                tp = TopicPartition(topic, partition)
                if (await end_offsets(consumer, [tp]))[tp] <= offset:
                    changed.append(topic)  # the partition ends before that record
                    continue
                consumer.assign([tp])
                consumer.seek(tp, offset)
                batch = await consumer.getmany(tp, timeout_ms=5000, max_records=1)
                records = batch.get(tp, [])
                # A first record past ``offset`` means retention deleted it: same topic.
                same = records and records[0].offset == offset
                if same and position_of(records[0]) != (offset, timestamp, key_crc):
                    changed.append(topic)
        finally:
            await consumer.stop()
        return changed

    async def _seek_start(self, partition: int) -> None:
        assert self.consumer is not None
        tps = [TopicPartition(t, partition) for t in self.topics]
        if self.settings.start_from == "earliest":
            for tp in tps:
                self.consumer.seek(tp, 0)
            return
        ends = await _true_ends(self.settings, tps)
        for tp in tps:
            self.consumer.seek(tp, ends[tp])

    # -- the loop ----------------------------------------------------------------------------

    async def run(self) -> None:
        """Consume until :meth:`stop`; after a Kafka failure, restart from the checkpoint."""
        backoff = BACKOFF_FIRST_S
        while True:
            try:
                await self._consume()
                return
            except KafkaError as ex:
                if self._stopping.is_set():
                    log.warning("%s: stopped while Kafka failed (%r); the last checkpoint "
                                "stands", self.name, ex)  # fmt: skip
                    return
                self.outages += 1
                if self.consumer_metrics is not None:
                    self.consumer_metrics.outages.labels(self.name).inc()
                where = "; ".join(getattr(ex, "__notes__", []))
                log.warning(
                    "%s: Kafka failed (%r%s): outputs since the last checkpoint may be "
                    "unacknowledged, so the agent restarts from its last checkpoint in "
                    "%.0f s (outage restart %d)",
                    self.name, ex, f", {where}" if where else "", backoff, self.outages,
                )  # fmt: skip
                self.states.clear()
                self._since_checkpoint.clear()
                self._positions.clear()
                self.sender.reset()
                self.ready.clear()
                with contextlib.suppress(TimeoutError):
                    await asyncio.wait_for(self._stopping.wait(), backoff)
                if self._stopping.is_set():
                    return
                backoff = min(backoff * 2, BACKOFF_MAX_S)
                self._recovering = True

    async def _consume(self) -> None:
        """One life of the consumer: from the checkpoint until stopped or Kafka fails."""
        self.consumer = make_consumer(
            self.settings,
            self.name,
            group_id=self.group,
            enable_auto_commit=False,
            auto_offset_reset="earliest",
            partition_assignment_strategy=(RangePartitionAssignor,),
            session_timeout_ms=self.settings.session_timeout_ms,
            heartbeat_interval_ms=max(self.settings.session_timeout_ms // 3, 100),
            max_partition_fetch_bytes=4 * 1024 * 1024,
            # aiokafka waits up to 500 ms for a fetch to fill; an idle stream should
            # not add that to every sample's latency.
            fetch_max_wait_ms=self.settings.fetch_max_wait_ms,
        )
        self.consumer.subscribe(self.topics, listener=_Listener(self))
        await self.consumer.start()
        kafka_failed = False
        try:
            while not self._stopping.is_set():
                batch = await getmany_until(self.consumer, self._stopping, 100, 5000)
                by_partition: dict[int, dict[str, list[ConsumerRecord]]] = {}
                for tp, records in batch.items():
                    by_partition.setdefault(tp.partition, {})[tp.topic] = records
                for partition, records in by_partition.items():
                    if partition not in self.states:
                        continue  # revoked while the fetch was in flight
                    await self.process(partition, records)
                    self._since_checkpoint[partition] += sum(len(r) for r in records.values())
                    positions = self._positions.setdefault(partition, {})
                    for topic, rs in records.items():
                        positions[topic] = position_of(rs[-1])
                self._count(batch)
                await self.on_idle()
                await self.sender.ship()
                await self._maybe_checkpoint()
                if self._recovering and self.ready.is_set():
                    self._recovering = False
                    log.warning("%s: Kafka is back; resumed from the checkpoint", self.name)
        except (KafkaError, asyncio.CancelledError):
            # Kafka failed, or the worker gave up waiting for it at shutdown: the state
            # may hold unacknowledged work, so never save it.
            kafka_failed = True
            raise
        finally:
            try:
                if self._failure is None and not kafka_failed:
                    await self.save(list(self.states))
            finally:
                # Sends LeaveGroup, so a restart rejoins at once; bounded if Kafka is gone.
                await close_client(self.consumer)
        if self._failure is not None:
            raise self._failure

    def _count(self, batch: dict[TopicPartition, list[ConsumerRecord]]) -> None:
        """Count what was read; refresh the lag gauges about once a second."""
        metrics = self.consumer_metrics
        if metrics is None or self.consumer is None:
            return
        for tp, records in batch.items():
            metrics.consumed.labels(self.name, tp.topic).inc(len(records))
        if time.monotonic() - self._last_lag < 1.0:
            return
        self._last_lag = time.monotonic()
        for partition, state in list(self.states.items()):
            for topic, offset in self.offsets_of(state).items():
                # The fetch response's high watermark: Tansu's ListOffsets is off by a batch.
                high = self.consumer.highwater(TopicPartition(topic, partition))
                if high is not None:
                    metrics.lag.labels(self.name, topic, str(partition)).set(max(0, high - offset))

    async def _maybe_checkpoint(self) -> None:
        due = [p for p, n in self._since_checkpoint.items() if n >= self.settings.checkpoint_every]
        if time.monotonic() - self._last_checkpoint >= self.settings.checkpoint_interval_s:
            due = [p for p, n in self._since_checkpoint.items() if n > 0]
            self._last_checkpoint = time.monotonic()
        await self.save(due)

    def stop(self) -> None:
        """Ask the loop to finish its batch, checkpoint and leave the group."""
        self._stopping.set()

    def fail(self, error: BaseException) -> None:
        """Stop without checkpointing, and make :meth:`run` raise ``error``.

        aiokafka only logs what a rebalance callback raises; this makes a failed
        restore stop the worker instead of leaving it idle without partitions.
        """
        log.error("%s: %r; stopping", self.name, error)
        self._failure = self._failure or error
        self._stopping.set()


class _Listener(ConsumerRebalanceListener):
    def __init__(self, agent: PartitionedAgent[Any]) -> None:
        self.agent = agent

    async def on_partitions_revoked(self, revoked: Any) -> None:
        partitions = {tp.partition for tp in revoked}
        try:
            await self.agent.save(partitions)
        except Exception as ex:  # noqa: BLE001 - surfaced through agent.fail
            self.agent.fail(ex)
        for p in partitions:
            self.agent.states.pop(p, None)
            self.agent._since_checkpoint.pop(p, None)

    async def on_partitions_assigned(self, assigned: Any) -> None:
        try:
            await self.agent._restore({tp.partition for tp in assigned})
        except Exception as ex:  # noqa: BLE001 - surfaced through agent.fail
            self.agent.fail(ex)
            return
        log.info("%s: assigned partitions %s", self.agent.name, sorted(self.agent.states))
        self.agent.ready.set()


async def _true_ends(settings: Settings, tps: list[TopicPartition]) -> dict[TopicPartition, int]:
    consumer = make_consumer(settings, "offsets", enable_auto_commit=False)
    await consumer.start()
    try:
        return await end_offsets(consumer, tps)
    finally:
        await consumer.stop()
