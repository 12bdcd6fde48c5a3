"""The worker agent: a consumer group over samples, labels and the repartition topic,
one :class:`~eddy.streams.engine.unit.Unit` per assigned partition, state on the changelog.

Delivery contract: a partition's state is checkpointed together with the input
offsets it reflects (see :mod:`eddy.streams.state.changelog`), and only after everything
produced from those records is acknowledged by the broker. On assignment the state
is restored (from the changelog, wherever the worker runs) and consumption resumes
at its offsets, so each input record changes the state exactly once, across crashes
and machines; outputs are at-least-once, and downstream drops repeats by id.

Records are fetched in batches (``getmany``), never one by one, and handed to the
units in event-time order (:mod:`eddy.streams.engine.merge`).

Outages: when Kafka fails under the agent (a produce is not acknowledged), it drops
its in-memory state, waits (1 s doubling to 30 s) and restarts from its last
checkpoint, so nothing unacknowledged counts as done. A checkpoint also records the
position, timestamp and key hash of the last record it reflects per input topic: if
that record is not there any more on restore (the topic was recreated, e.g. a
memory-only broker restarted), the agent keeps its learned state and reads the new
topic from its start. If the input's log starts after the checkpoint's offset,
retention removed records the partition never processed: the agent says how many.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import time
import zlib
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from typing import Any

from aiokafka import AIOKafkaConsumer, AIOKafkaProducer, ConsumerRecord, TopicPartition
from aiokafka.abc import ConsumerRebalanceListener
from aiokafka.coordinator.assignors.range import RangePartitionAssignor
from aiokafka.errors import KafkaError

from eddy.streams.engine.checkpoint import Checkpoint, Position
from eddy.streams.engine.context import EngineConfig, EngineRuntime, Out, Outputs
from eddy.streams.engine.merge import InputMerger
from eddy.streams.engine.unit import Unit
from eddy.streams.kafka.clients import (
    assign,
    close_client,
    end_offsets,
    getmany_until,
    make_consumer,
)
from eddy.streams.kafka.sender import BatchSender, Delivery
from eddy.streams.observe.metrics import ConsumerMetrics
from eddy.streams.records import Record
from eddy.streams.settings import KafkaConfig, StateConfig
from eddy.streams.state.store import PartitionStore

log = logging.getLogger(__name__)

BACKOFF_FIRST_S = 1.0
BACKOFF_MAX_S = 30.0
COMMIT_TIMEOUT_S = 5.0
HOLE_RETRIES = 5  # reads of a missing offset before it counts as a real gap

_Offsets = dict[TopicPartition, int]
# A checkpoint taken and not yet written: the outputs it waits for, (partition, pickled
# state, generation) of each partition, and the input offsets to commit after.
_Snapshots = tuple[Delivery, list[tuple[int, bytes, int]], _Offsets]


def position_of(record: Any) -> Position:
    """A record's identity as a checkpoint remembers it."""
    return (record.offset, record.timestamp, zlib.crc32(record.key or b""))


@dataclass
class _Partition:
    """An assigned partition: its unit, merger, and checkpoint bookkeeping."""

    unit: Unit
    merger: InputMerger
    positions: dict[str, Position]
    generation: int
    fetched: dict[str, int] = field(default_factory=dict)  # topic -> next offset to fetch
    holes: dict[str, tuple[int, int]] = field(default_factory=dict)  # topic -> (offset, tries)
    since_checkpoint: int = 0
    restored_from: str = "new"


class WorkerAgent:
    """Consumes a worker's input topics in group ``<prefix>worker``.

    ``on_tick`` (if given) is called once per loop turn (metric snapshots, model
    snapshots: see :mod:`eddy.streams.agents.worker`) and returns records to ship with
    the units' outputs.
    """

    name = "worker"

    def __init__(
        self,
        kafka: KafkaConfig,
        state: StateConfig,
        config: EngineConfig,
        runtime: EngineRuntime,
        producer: AIOKafkaProducer,
        store: PartitionStore,
        consumer_metrics: ConsumerMetrics | None = None,
        on_tick: Callable[[], list[Out]] | None = None,
    ) -> None:
        self.kafka = kafka
        self.state_config = state
        self.config = config
        self.runtime = runtime
        self.producer = producer
        self.store = store
        self.consumer_metrics = consumer_metrics
        self.on_tick = on_tick
        t = config.topics
        self.topics = [t.samples, t.labels, t.repartition]
        self.group = config.group
        self.partitions: dict[int, _Partition] = {}
        self.sender = BatchSender(producer)
        self._pending = Outputs()  # what the units returned, to ship at the end of the turn
        self.consumer: AIOKafkaConsumer | None = None
        self.ready = asyncio.Event()  # set once partitions are assigned and restored
        self.outages = 0
        # Set to end the consumer's current life: by stop(), or by fail() when a rebalance
        # callback failed. Only a stop() request ends run(); a Kafka failure restarts.
        self._stopping = asyncio.Event()
        self._stop_requested = False
        self._failure: BaseException | None = None
        self._last_checkpoint = time.monotonic()
        self._last_lag = 0.0
        self._recovering = False
        # Inputs a merger waits for -> the time of their last fetch response then.
        self._wanted_since: dict[TopicPartition, float] = {}
        # The merge's tie order of inputs (after event time and kind: see merge).
        self._inputs = [t.labels, t.samples, t.repartition]
        # Held while records are processed and while state is checkpointed or handed
        # over: a rebalance callback (aiokafka's coordinator task) or a model snapshot
        # must never see, or pickle, a state half-way through a batch.
        self.lock = asyncio.Lock()
        self._epoch = 0  # counts restores and releases (rebalances)
        # The periodic checkpoint being written (see _maybe_checkpoint); one at a time.
        self._writing: asyncio.Task[None] | None = None

    # -- the loop ----------------------------------------------------------------------------

    @property
    def solo(self) -> bool:
        """Whether this worker holds every partition (no other worker in its group)."""
        return len(self.partitions) == self.config.partitions

    async def run(self) -> None:
        """Consume until :meth:`stop`; after a Kafka failure, restart from the checkpoint."""
        backoff = BACKOFF_FIRST_S
        while True:
            try:
                await self._consume()
                return
            except KafkaError as ex:
                if self._stop_requested:
                    log.warning(
                        "%s: stopped while Kafka failed (%r); the last checkpoint stands",
                        self.name,
                        ex,
                    )
                    return
                self.outages += 1
                if self.consumer_metrics is not None:
                    self.consumer_metrics.outages.labels(self.name).inc()
                where = "; ".join(getattr(ex, "__notes__", []))
                log.warning(
                    "%s: Kafka failed (%r%s): outputs since the last checkpoint may be "
                    "unacknowledged, so the agent restarts from its last checkpoint in "
                    "%.0f s (outage restart %d)",
                    self.name,
                    ex,
                    f", {where}" if where else "",
                    backoff,
                    self.outages,
                )
                self._drop_all()
                self._pending = Outputs()  # outputs of the failed life are not sent
                self.sender.reset()
                self.ready.clear()
                self._failure = None
                self._stopping.clear()  # set by fail(): this life ended, the next begins
                with contextlib.suppress(TimeoutError):
                    await asyncio.wait_for(self._stopping.wait(), backoff)
                if self._stop_requested:
                    return
                backoff = min(backoff * 2, BACKOFF_MAX_S)
                self._recovering = True

    async def _consume(self) -> None:
        """One life of the consumer: from the checkpoint until stopped or Kafka fails."""
        self.consumer = make_consumer(
            self.kafka,
            self.name,
            group_id=self.group,
            enable_auto_commit=False,
            auto_offset_reset="earliest",
            partition_assignment_strategy=(RangePartitionAssignor,),
            session_timeout_ms=self.kafka.session_timeout_ms,
            heartbeat_interval_ms=max(self.kafka.session_timeout_ms // 3, 100),
            max_partition_fetch_bytes=self.kafka.fetch_partition_bytes,
            # aiokafka waits up to 500 ms for a fetch to fill; an idle stream should not
            # add that to every sample's latency.
            fetch_max_wait_ms=self.kafka.fetch_max_wait_ms,
        )
        self.consumer.subscribe(self.topics, listener=_Listener(self))
        await self.consumer.start()
        clean = False
        try:
            while not self._stopping.is_set():
                epoch = self._epoch
                wanted = self._wanted()
                batch = await getmany_until(
                    self.consumer,
                    self._stopping,
                    100,
                    self.kafka.fetch_max_records,
                    wanted,
                )
                starved = self._starved(wanted, batch)
                async with self.lock:
                    if self._epoch == epoch:
                        self._take(batch)
                    # else: a rebalance restored partitions while this fetch was in flight:
                    # its records may predate the restored positions (the consumer was
                    # seeked there, and delivers them again).
                    for number, part in list(self.partitions.items()):
                        ready = part.merger.take(
                            lambda topic, since, n=number: self._caught_up(topic, n, since),
                            lambda topic, n=number, gone=starved: TopicPartition(topic, n) in gone,
                        )
                        if ready:
                            self._pending.add(part.unit.process(ready))
                            part.since_checkpoint += len(ready)
                            for item in ready:
                                part.positions[item.record.topic] = position_of(item.record)
                    self._count(batch)
                    self._idle()
                    await self._ship(self.on_tick() if self.on_tick is not None else ())
                    await self._maybe_checkpoint()
                if self._recovering and self.ready.is_set():
                    self._recovering = False
                    log.warning("%s: Kafka is back; resumed from the checkpoint", self.name)
            clean = True
        finally:
            # A failure path never saves: Kafka failed, the worker gave up waiting for it
            # at shutdown, or a batch stopped half-way; the state may hold work that was
            # not done or not acknowledged. The last checkpoint stands.
            try:
                if clean and self._failure is None:
                    async with self.lock:
                        await self.save(list(self.partitions))
                else:
                    await self._abandon_write()
            finally:
                # Sends LeaveGroup, so a restart rejoins at once; bounded if Kafka is gone.
                await close_client(self.consumer)
        if self._failure is not None:
            raise self._failure

    def _take(self, batch: dict[TopicPartition, list[ConsumerRecord]]) -> None:
        """Hand fetched records to their partition's merger: never one already taken, and
        never past a hole in the offsets until it was looked at again.

        The embedded broker (Tansu) can answer a fetch with a record batch missing
        between two others while producers write concurrently; aiokafka then skips it
        for good. On a hole the records before it are taken and the partition is read
        again from the missing offset, up to ``HOLE_RETRIES`` times: a hole that is
        still there is a real one (Kafka compaction or transaction markers).
        """
        for tp, records in batch.items():
            part = self.partitions.get(tp.partition)
            if part is None or not records:
                continue  # revoked while the fetch was in flight
            expected = part.fetched.get(tp.topic, part.unit.state.offsets.get(tp.topic, 0))
            taken = []
            for record in records:
                if record.offset < expected:
                    continue  # taken already
                if record.offset > expected:
                    hole_at, tries = part.holes.get(tp.topic, (expected, 0))
                    tries = tries if hole_at == expected else 0
                    if tries < HOLE_RETRIES:
                        part.holes[tp.topic] = (expected, tries + 1)
                        log.debug(
                            "%s: %s[%d] offset %d missing from a fetch; reading again (%d/%d)",
                            self.name,
                            tp.topic,
                            tp.partition,
                            expected,
                            tries + 1,
                            HOLE_RETRIES,
                        )
                        assert self.consumer is not None
                        self.consumer.seek(tp, expected)  # look again from the missing offset
                        break
                taken.append(Record.of(record))
                expected = record.offset + 1
            if taken:
                assert self.consumer is not None
                fetched_at = self.consumer.last_poll_timestamp(tp) or 0
                part.merger.add(tp.topic, part.unit.timed(tp.topic, taken), fetched_at)
                part.fetched[tp.topic] = expected
                hole = part.holes.get(tp.topic)
                if hole is not None and expected > hole[0]:
                    del part.holes[tp.topic]

    def _caught_up(self, topic: str, partition: int, since: float) -> bool:
        """Whether the broker held no unfetched records of ``topic[partition]`` as of a
        fetch response received at or after ``since`` (ms): the merger's test of an
        input that has nothing buffered (:meth:`InputMerger.take`)."""
        assert self.consumer is not None
        tp = TopicPartition(topic, partition)
        high = self.consumer.highwater(tp)
        polled = self.consumer.last_poll_timestamp(tp)
        if high is None or polled is None or polled < since:
            return False
        part = self.partitions[partition]
        return part.fetched.get(topic, part.unit.state.offsets.get(topic, 0)) >= high

    def _wanted(self) -> list[TopicPartition]:
        """The inputs a merger waits for (nothing buffered, records on the broker), if
        any: the next fetch takes only those. aiokafka hands over one partition's
        prefetched records before the next one's, so a merger waiting for labels could
        otherwise be handed samples for as long as their backlog lasts."""
        wanted = []
        for number, part in self.partitions.items():
            if len(part.merger):
                wanted += [
                    TopicPartition(t, number)
                    for t in self.topics
                    if not part.merger.buffered(t) and not self._caught_up(t, number, 0)
                ]
        return wanted

    def _starved(
        self, wanted: list[TopicPartition], batch: dict[TopicPartition, list[ConsumerRecord]]
    ) -> set[TopicPartition]:
        """The wanted inputs the broker answered for since they were first wanted, without
        a record: what the merge's wait counts (InputMerger.take). A busy machine that is
        slow to fetch makes nothing late; only an input that does not deliver does."""
        assert self.consumer is not None
        since = self._wanted_since
        for tp in list(since):
            if tp not in wanted or batch.get(tp):
                del since[tp]
        starved = set()
        for tp in wanted:
            polled = self.consumer.last_poll_timestamp(tp)
            if tp not in since:
                since[tp] = polled if polled is not None else -1
            elif polled is not None and polled > since[tp]:
                starved.add(tp)
        return starved

    def _idle(self) -> None:
        """Between batches: let each unit expire what waited too long."""
        assert self.consumer is not None
        for number, part in self.partitions.items():
            # Caught up on every input as of the last fetch responses: event time moves
            # on with the wall clock (Unit.idle_clocks).
            caught_up_at: float | None = None
            if not len(part.merger):
                polls = [
                    self.consumer.last_poll_timestamp(TopicPartition(t, number))
                    for t in self.topics
                ]
                if all(p is not None for p in polls) and all(
                    self._caught_up(t, number, 0) for t in self.topics
                ):
                    caught_up_at = min(p for p in polls if p is not None)
            idle = part.unit.on_idle(part.unit.idle_clocks(caught_up_at))
            part.since_checkpoint += idle.changed
            self._pending.add(idle)

    async def _ship(self, extra: Sequence[Out] = ()) -> None:
        """Send every output of the units not sent yet, and ``extra`` records, in one
        call (see BatchSender)."""
        pending, self._pending = self._pending, Outputs()
        if len(pending) or extra:
            # An Out is (topic, value, key, partition, headers, ts), as send_many takes.
            await self.sender.send_many([*pending.records(), *extra])
        await self.sender.ship()

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
        for number, part in list(self.partitions.items()):
            for topic in self.topics:
                offset = part.unit.state.offsets.get(topic, 0)
                # The fetch response's high watermark: Tansu's ListOffsets is off by a batch.
                high = self.consumer.highwater(TopicPartition(topic, number))
                if high is not None:
                    lag = max(0, high - offset)
                    metrics.lag.labels(self.name, topic, str(number)).set(lag)

    # -- checkpoints -------------------------------------------------------------------------

    async def save(self, partitions: list[int]) -> None:
        """Flush outputs, then checkpoint the given partitions' states, all before it
        returns (the caller holds :attr:`lock`)."""
        await self._finish_write()
        snapshots = await self._snapshot(partitions)
        if snapshots is not None:
            await self._write(*snapshots)

    async def _maybe_checkpoint(self) -> None:
        """Checkpoint the partitions that are due, writing in the background: the lock
        is held while the states are pickled, not while they are compressed, signed,
        sent and acknowledged."""
        writing = self._writing
        if writing is not None:
            if not writing.done():
                return  # one at a time; what is due now is due at the next turn
            self._writing = None
            writing.result()  # a failure surfaces here: the agent restarts from before it
        every = self.state_config.checkpoint_every
        due = [p for p, part in self.partitions.items() if part.since_checkpoint >= every]
        if time.monotonic() - self._last_checkpoint >= self.state_config.checkpoint_interval_s:
            due = [p for p, part in self.partitions.items() if part.since_checkpoint > 0]
            self._last_checkpoint = time.monotonic()
        snapshots = await self._snapshot(due) if due else None
        if snapshots is not None:
            self._writing = asyncio.create_task(self._write(*snapshots))

    async def _snapshot(self, partitions: list[int]) -> _Snapshots | None:
        """The first half of a checkpoint, under :attr:`lock`: ship every output of the
        records processed so far and pickle the partitions' states as they are now."""
        partitions = [p for p in partitions if p in self.partitions]
        if not partitions:
            return None
        for p in partitions:
            self._pending.add(self.partitions[p].unit.flush())
        await self._ship()
        delivery = await self.sender.shipped()
        snapshots = []
        for p in partitions:
            part = self.partitions[p]
            part.generation += 1
            saved = Checkpoint(part.unit.state, dict(part.positions), part.generation)
            snapshots.append((p, await self.store.snapshot(saved), part.generation))
            part.since_checkpoint = 0
        self._last_checkpoint = time.monotonic()
        return delivery, snapshots, self._offsets(partitions)

    async def _write(
        self, delivery: Delivery, snapshots: list[tuple[int, bytes, int]], offsets: _Offsets
    ) -> None:
        """The second half, which needs no lock: once the broker has every output those
        states reflect, seal them and write them to the changelog; then commit their
        offsets."""
        await self.sender.wait(delivery)  # outputs of these records are durable first
        for p, snapshot, generation in snapshots:
            await self.store.write(p, snapshot, generation)
        await self._commit(offsets)

    async def _finish_write(self) -> None:
        """Wait for the checkpoint being written, if any; raises its failure."""
        writing, self._writing = self._writing, None
        if writing is not None:
            await writing

    async def _abandon_write(self) -> None:
        """On a failure path: stop writing a checkpoint (a torn one is never read: its
        manifest comes last, in the other slot)."""
        writing, self._writing = self._writing, None
        if writing is not None and not writing.done():
            writing.cancel()
        if writing is not None:
            await asyncio.wait([writing])
            if not writing.cancelled() and writing.exception() is not None:
                log.debug("%s: checkpoint abandoned: %r", self.name, writing.exception())

    def _offsets(self, partitions: list[int]) -> _Offsets:
        if self.consumer is None:
            return {}
        assignment = self.consumer.assignment()
        return {
            TopicPartition(t, p): o
            for p in partitions
            for t, o in self.partitions[p].unit.state.offsets.items()
            if TopicPartition(t, p) in assignment
        }

    async def _commit(self, offsets: _Offsets) -> None:
        # Informational: lag tools read committed offsets; the checkpoint holds the truth.
        if self.consumer is None or not offsets:
            return
        try:
            # Bounded: aiokafka retries a commit for as long as the group has no
            # coordinator, which would hold up a shutdown indefinitely.
            await asyncio.wait_for(self.consumer.commit(offsets), COMMIT_TIMEOUT_S)
        except Exception as ex:  # noqa: BLE001 - commits are advisory here
            log.debug("%s: commit failed (%r); the checkpoint holds the offsets", self.name, ex)

    async def restore(self, numbers: set[int]) -> None:
        """Restore the assigned partitions (from the changelog) and seek their inputs."""
        assert self.consumer is not None
        self._epoch += 1
        for p in sorted(numbers):
            restored = await self.store.assign(p)
            if restored is not None:
                saved = restored.checkpoint
                state, positions = saved.state, dict(saved.positions)
                for topic in await self._recreated(p, positions):
                    log.warning(
                        "%s: %s[%d] is not the partition the checkpoint was taken on (the "
                        "topic was recreated, or the broker lost its data): keeping the "
                        "learned state, reading the partition from its start",
                        self.name,
                        topic,
                        p,
                    )
                    state.offsets[topic] = 0
                    positions.pop(topic, None)
                generation, source = max(saved.generation, restored.generation), restored.source
            else:
                state = Unit.new_state(p, self.config)
                positions, generation, source = {}, 0, "new"
                if self.state_config.start_from == "latest":
                    state.offsets.update(await self._ends(p))
            for learner in state.learners.values():
                learner.bind(self.runtime.policy.spec(learner.stream))
            await self._warn_retention(p, state.offsets)
            for topic in self.topics:
                self.consumer.seek(TopicPartition(topic, p), state.offsets.get(topic, 0))
            merger = InputMerger(self._inputs, self.config.merge_wait_s, self.config.merge_grace_ms)
            unit = Unit(state, self.config, self.runtime)
            part = _Partition(unit, merger, positions, generation, restored_from=source)
            # Only now, with no await in between: the loop sees a partition whole or not.
            self.partitions[p] = part
            log.info(
                "%s: partition %d restored from %s (generation %d), resuming at %s",
                self.name,
                p,
                source,
                generation,
                {t.removeprefix(self.config.topics.prefix): o for t, o in state.offsets.items()},
            )

    def release(self, numbers: set[int]) -> None:
        """Forget revoked partitions (after they were saved)."""
        self._epoch += 1
        for p in numbers:
            part = self.partitions.pop(p, None)
            if part is not None:
                part.unit.release()
                part.merger.clear()
                self.store.revoke(p)

    def _drop_all(self) -> None:
        self.release(set(self.partitions))

    async def _ends(self, p: int) -> dict[str, int]:
        consumer = make_consumer(self.kafka, "offsets", enable_auto_commit=False)
        await consumer.start()
        try:
            tps = [TopicPartition(t, p) for t in self.topics]
            ends = await end_offsets(consumer, tps)
        finally:
            await close_client(consumer)
        return {tp.topic: o for tp, o in ends.items()}

    async def _warn_retention(self, p: int, offsets: dict[str, int]) -> None:
        """Say so when retention deleted records this partition has not processed."""
        assert self.consumer is not None
        tps = [TopicPartition(t, p) for t in self.topics]
        try:
            starts = await self.consumer.beginning_offsets(tps)
        except KafkaError:
            return
        for tp, start in starts.items():
            offset = offsets.get(tp.topic, 0)
            if start > offset:
                log.warning(
                    "%s: %s[%d] starts at offset %d but this partition's state has processed "
                    "it only up to %d: %d records were deleted by the topic's retention "
                    "before they were learned (raise retention.ms, or keep workers running)",
                    self.name,
                    tp.topic,
                    p,
                    start,
                    offset,
                    start - offset,
                )
                offsets[tp.topic] = start

    async def _recreated(self, partition: int, positions: dict[str, Position]) -> list[str]:
        """Topics whose last checkpointed record is no longer where it was."""
        if not positions:
            return []
        consumer = make_consumer(
            self.kafka, "verify", enable_auto_commit=False, auto_offset_reset="earliest"
        )
        await consumer.start()
        changed = []
        try:
            for topic, (offset, timestamp, key_crc) in positions.items():
                tp = TopicPartition(topic, partition)
                if (await end_offsets(consumer, [tp]))[tp] <= offset:
                    changed.append(topic)  # the partition ends before that record
                    continue
                assign(consumer, [tp])
                consumer.seek(tp, offset)
                batch = await consumer.getmany(tp, timeout_ms=5000, max_records=1)
                records = batch.get(tp, [])
                # A first record past ``offset`` means retention deleted it: same topic.
                same = records and records[0].offset == offset
                if same and position_of(records[0]) != (offset, timestamp, key_crc):
                    changed.append(topic)
        finally:
            await close_client(consumer)
        return changed

    def stop(self) -> None:
        """Ask the loop to finish its batch, checkpoint and leave the group."""
        self._stop_requested = True
        self._stopping.set()

    def fail(self, error: BaseException) -> None:
        """End the consumer's life without checkpointing, and make it raise ``error``:
        :meth:`run` restarts from the last checkpoint after a Kafka error, and raises
        anything else.

        aiokafka only logs what a rebalance callback raises; this makes a failed
        restore or hand-over end the consumer instead of leaving it idle without
        partitions.
        """
        log.error("%s: %r in a rebalance; leaving the group", self.name, error)
        self._failure = self._failure or error
        self._stopping.set()


class _Listener(ConsumerRebalanceListener):
    def __init__(self, agent: WorkerAgent) -> None:
        self.agent = agent

    async def on_partitions_revoked(self, revoked: Any) -> None:
        partitions = {tp.partition for tp in revoked}
        async with self.agent.lock:
            try:
                await self.agent.save(sorted(partitions))
            except Exception as ex:  # noqa: BLE001 - surfaced through agent.fail
                self.agent.fail(ex)
            self.agent.release(partitions)

    async def on_partitions_assigned(self, assigned: Any) -> None:
        async with self.agent.lock:
            try:
                await self.agent.restore({tp.partition for tp in assigned})
            except Exception as ex:  # noqa: BLE001 - surfaced through agent.fail
                self.agent.fail(ex)
                return
        log.info("%s: assigned partitions %s", self.agent.name, sorted(self.agent.partitions))
        self.agent.ready.set()
