"""Sending many small records with whole batches, not one ``send`` per record.

aiokafka's ``send`` costs ~15 µs a record in Python (a future, the partitioner,
the accumulator), which profiled at a fifth of the worker's time. The agents
instead append records to one batch per partition and hand aiokafka whole
batches; records keep the partition the default partitioner would give their
key, so consumers that rely on key partitioning see no difference.

Delivery: :meth:`ship` sends the open batches; :meth:`flush` also waits until
the broker acknowledged everything shipped; :meth:`shipped` and :meth:`wait` split
that in two, so that an agent can go on while what a checkpoint depends on is
acknowledged.
"""

from __future__ import annotations

import asyncio
import itertools
from collections.abc import Iterable, Sequence
from typing import Any

from aiokafka import AIOKafkaProducer
from aiokafka.partitioner import DefaultPartitioner

from eddy.streams.exceptions import DecodeError

_KEY_CACHE = 4096

# Batches shipped and not yet acknowledged: (topic, partition) and the future of each.
Delivery = list[tuple[tuple[str, int], "asyncio.Future[Any]"]]


class RecordTooLarge(DecodeError):
    """A record is larger than a whole producer batch."""

    reason = "too_large"


class BatchSender:
    """Per-partition batches over one producer."""

    def __init__(self, producer: AIOKafkaProducer) -> None:
        self.producer = producer
        self._partitioner = DefaultPartitioner()
        self._partitions: dict[str, list[int]] = {}
        self._open: dict[tuple[str, int], Any] = {}
        self._in_flight: Delivery = []
        self._round_robin = itertools.count()
        # aiokafka's murmur2 is pure Python (a third of a send). Keys such as stream
        # names repeat on every record; ids do not, so the cache stops growing.
        self._key_partition: dict[tuple[str, bytes], int] = {}

    async def _partitions_of(self, topic: str) -> list[int]:
        parts = self._partitions.get(topic)
        if parts is None:
            parts = self._partitions[topic] = sorted(await self.producer.partitions_for(topic))
        return parts

    async def send_many(self, records: Iterable[Sequence[Any]]) -> None:
        """Append each ``(topic, value, key, partition, headers, timestamp_ms)`` to its
        partition's batch, in order; ships a batch when it is full.

        The partition is ``partition`` if given, else the default partitioner's for
        ``key`` (round-robin without a key); the timestamp is ``timestamp_ms``, else the
        time of sending. One call for many records: a coroutine per record costs more
        than the append.
        """
        open_batches = self._open
        for topic, value, key, partition, headers, timestamp_ms in records:
            if partition is None:
                partition = await self._partition_for(topic, key)
            where = (topic, partition)
            batch = open_batches.get(where)
            if batch is None:
                batch = open_batches[where] = self.producer.create_batch()
            headers = list(headers)
            if batch.append(timestamp=timestamp_ms, key=key, value=value, headers=headers) is None:
                await self._ship(where)
                batch = open_batches[where] = self.producer.create_batch()
                if (
                    batch.append(timestamp=timestamp_ms, key=key, value=value, headers=headers)
                    is None
                ):
                    msg = f"a {len(value or b'')}-byte record does not fit a producer batch"
                    raise RecordTooLarge(msg)

    async def _partition_for(self, topic: str, key: bytes | None) -> int:
        parts = await self._partitions_of(topic)
        if key is None:
            partition = parts[next(self._round_robin) % len(parts)]
        else:
            partition = self._key_partition.get((topic, key))
            if partition is None:
                partition = self._partitioner(key, parts, parts)
                if len(self._key_partition) < _KEY_CACHE:
                    self._key_partition[(topic, key)] = partition
        return partition

    async def _ship(self, where: tuple[str, int]) -> None:
        batch = self._open.pop(where)
        if batch.record_count():
            batch.close()
            topic, partition = where
            self._in_flight.append(
                (where, await self.producer.send_batch(batch, topic, partition=partition))
            )

    async def ship(self) -> None:
        """Send every open batch (without waiting for acknowledgements)."""
        for where in list(self._open):
            await self._ship(where)
        # forget acknowledged batches; failures stay for flush() to raise
        self._in_flight = [(w, f) for w, f in self._in_flight if not _succeeded(f)]

    def reset(self) -> None:
        """Forget open and unacknowledged batches (after a delivery failure, the
        agent replays from its checkpoint and sends them again) and the
        partition counts (topics may have been recreated)."""
        for _, future in self._in_flight:
            if future.done() and not future.cancelled():
                future.exception()  # retrieved: no "never retrieved" warning
            else:
                future.cancel()
        self._in_flight = []
        self._open = {}
        self._partitions = {}
        self._key_partition = {}

    async def flush(self) -> None:
        """Send every open batch and wait until the broker has all of them."""
        await self.wait(await self.shipped())

    async def shipped(self) -> Delivery:
        """Send every open batch; returns what was shipped and not yet acknowledged, for
        :meth:`wait` (records appended later are not in it)."""
        await self.ship()
        in_flight, self._in_flight = self._in_flight, []
        return in_flight

    @staticmethod
    async def wait(delivery: Delivery) -> None:
        """Wait until the broker acknowledged ``delivery``; raises the first failure."""
        results = await asyncio.gather(*(f for _, f in delivery), return_exceptions=True)
        for ((topic, partition), _), result in zip(delivery, results, strict=True):
            if isinstance(result, BaseException):
                result.add_note(f"while delivering a batch to {topic}[{partition}]")
                raise result


def _succeeded(future: asyncio.Future[Any]) -> bool:
    return future.done() and not future.cancelled() and future.exception() is None
