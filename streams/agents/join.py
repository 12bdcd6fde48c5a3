"""The join agent: samples ⋈ labels by event id → examples, keyed by model stream.

Samples and labels are co-partitioned (same key, same partition count), so each
partition number is joined on its own, with a :class:`~eddy.models.join.JoinBuffer`.

The join's TTL runs in event time: each topic's clock is the newest record
timestamp read from it, and the wall clock once the agent has read all there is
on that partition. A sample expires when the labels' clock is past its time plus
the TTL, so reading a backlog never expires a sample whose label is merely unread.
Expired or evicted samples, orphan and duplicate labels go to the dead-letter
topic with their reason and are counted: nothing leaves silently.
"""

from __future__ import annotations

import time
from dataclasses import dataclass, field
from typing import Any

from aiokafka import AIOKafkaProducer, ConsumerRecord, TopicPartition

from eddy.models.join import JoinBuffer, Joined, Pending, Unjoined
from eddy.streams.agents.base import PartitionedAgent
from eddy.streams.codec import Example, decode_label, decode_sample, encode_example
from eddy.streams.deadletter import DeadLetterQueue, dead_letter_headers
from eddy.streams.exceptions import DecodeError, TimestampInFuture
from eddy.streams.metrics import ConsumerMetrics, JoinMetrics
from eddy.streams.settings import Settings
from eddy.streams.topics import Topics


class Unmatched(DecodeError):
    """A sample or label that left the join without its other half."""

    def __init__(self, kind: str, reason: str, ttl_s: float) -> None:
        self.reason = f"{kind}_{reason}"
        what = {
            "expired": f"waited longer than the join TTL ({ttl_s:g}s)",
            "evicted": "evicted by the join's size cap (EDDY_JOIN_MAX_PENDING)",
            "duplicate": "has the id of one already waiting",
        }[reason]
        super().__init__(
            f"{kind} {what}; its {'label' if kind == 'sample' else 'sample'} never came"
        )


@dataclass
class JoinState:
    """One partition's join state and the offsets it reflects."""

    buffer: JoinBuffer
    offsets: dict[str, int] = field(default_factory=dict)
    clocks: dict[str, int] = field(default_factory=dict)  # topic -> newest event time read
    joined: int = 0
    unjoined: dict[str, int] = field(default_factory=dict)


@dataclass(frozen=True)
class _Position:
    """Enough of a consumed record to dead-letter it later (SourceRecord protocol)."""

    topic: str
    partition: int
    offset: int
    timestamp: int
    key: bytes | None
    value: bytes | None
    headers: Any = ()


class JoinAgent(PartitionedAgent[JoinState]):
    """Joins samples with labels; writes examples; dead-letters what cannot join."""

    name = "join"

    def __init__(
        self,
        settings: Settings,
        producer: AIOKafkaProducer,
        dlq: DeadLetterQueue,
        metrics: JoinMetrics,
        consumer_metrics: ConsumerMetrics | None = None,
    ) -> None:
        self.t = Topics(settings.topic_prefix)
        super().__init__(settings, producer, [self.t.samples, self.t.labels], consumer_metrics)
        self.dlq = dlq
        self.metrics = metrics
        self.ttl_ms = int(settings.join_ttl_s * 1000)
        self.max_bytes = settings.max_message_bytes
        self.max_future_ms = int(settings.max_future_s * 1000)

    def new_state(self, partition: int) -> JoinState:
        """An empty buffer reading both topics from the start."""
        return JoinState(JoinBuffer(self.ttl_ms, self.settings.join_max_pending))

    def offsets_of(self, state: JoinState) -> dict[str, int]:
        """Next offsets of samples and labels."""
        return state.offsets

    def set_offset(self, state: JoinState, topic: str, offset: int) -> None:
        """Read ``topic`` from ``offset`` next."""
        state.offsets[topic] = offset

    async def process(self, partition: int, records: dict[str, list[ConsumerRecord]]) -> None:
        """Decode, join, emit; labels first so a batch holding both halves joins at once."""
        state = self.states[partition]
        results: list[Joined | Unjoined] = []
        now = _now_ms()
        # A producer's clock far ahead must not move the join's clock: that would
        # expire everything waiting. Such record timestamps count as "now".
        latest = now + self.max_future_ms
        for topic, decode in ((self.t.labels, decode_label), (self.t.samples, decode_sample)):
            batch = records.get(topic)
            if not batch:
                continue
            for record, event in await self.dlq.decode_all(batch, self._decoder(decode, latest)):
                stored = _Position(
                    record.topic, record.partition, record.offset, record.timestamp,
                    record.key, record.value, record.headers,
                )  # fmt: skip
                # the raw record rides along, so an unmatched one is dead-lettered unchanged
                where = (record.partition, record.offset)
                at = record.timestamp if record.timestamp <= latest else now
                pending = Pending(event.id, (event, stored), where, at)
                if topic == self.t.samples:
                    results += state.buffer.add_sample(pending, event.label)
                else:
                    results += state.buffer.add_label(pending)
            state.offsets[topic] = batch[-1].offset + 1
            newest = max((r.timestamp for r in batch if r.timestamp <= latest), default=0)
            state.clocks[topic] = max(state.clocks.get(topic, 0), newest)
        await self._emit(state, results)
        self.metrics.pending.set(self._pending())

    def _decoder(self, decode: Any, latest_ms: int) -> Any:
        max_bytes = self.max_bytes

        def checked(raw: bytes) -> Any:
            event = decode(raw, max_bytes)
            if event.ts is not None and event.ts > latest_ms:
                ahead = (event.ts - latest_ms) / 1000 + self.max_future_ms / 1000
                msg = (
                    f"$.ts is {ahead:,.0f} s ahead of this machine's clock; at most "
                    f"{self.max_future_ms / 1000:g} s is accepted (EDDY_MAX_FUTURE_S)"
                )
                raise TimestampInFuture(msg)
            return event

        return checked

    async def on_idle(self) -> None:
        """Expire entries the other stream's clock has left behind by the TTL."""
        now = _now_ms()
        for partition, state in self.states.items():
            label_clock = self._clock(state, self.t.labels, partition, now)
            sample_clock = self._clock(state, self.t.samples, partition, now)
            expired = state.buffer.expire(label_clock, sample_clock)
            if expired:
                await self._emit(state, list(expired))
        self.metrics.pending.set(self._pending())
        totals: dict[str, int] = {}
        for state in self.states.values():
            for reason, n in state.unjoined.items():
                totals[reason] = totals.get(reason, 0) + n
        for reason, n in totals.items():
            self.metrics.unjoined_state.labels(reason).set(n)

    def _clock(self, state: JoinState, topic: str, partition: int, now: int) -> int:
        # Caught up with the high watermark of the last fetch response: whatever comes
        # next was stamped after that response. Not after *now*: under load that
        # watermark is stale, and "now" expired samples whose labels were next in line
        # (0.4% of a 12x burst in tests/chaos/test_load.py).
        clock = state.clocks.get(topic, 0)
        if self.consumer is not None:
            tp = TopicPartition(topic, partition)
            highwater = self.consumer.highwater(tp)
            if highwater is not None and state.offsets.get(topic, 0) >= highwater:
                polled = self.consumer.last_poll_timestamp(tp)
                clock = max(clock, min(now, polled if polled is not None else now))
        return clock

    def _pending(self) -> int:
        return sum(len(s.buffer) for s in self.states.values())

    async def _emit(self, state: JoinState, results: list[Joined | Unjoined]) -> None:
        joined = 0
        try:
            for result in results:
                if isinstance(result, Joined):
                    sample, stored = result.sample.payload
                    # a waiting label's payload is (Label, record); an inline label is the value
                    label = (
                        result.label[0].label if isinstance(result.label, tuple) else result.label
                    )
                    example = Example(
                        id=sample.id,
                        stream=sample.stream,
                        features=sample.features,
                        label=label,
                        sample=(stored.partition, stored.offset),
                        label_at=result.label_position,
                        ts=sample.ts,
                    )
                    await self.sender.send(
                        self.t.examples, encode_example(example), key=sample.stream.encode()
                    )
                    joined += 1
                    if result.label_position is not None and sample.ts is not None:
                        self.metrics.label_delay.observe(max(_now_ms() - sample.ts, 0) / 1000)
                else:
                    _, stored = result.entry.payload
                    error = Unmatched(result.kind, result.reason, self.settings.join_ttl_s)
                    await self.sender.send(
                        self.dlq.topic,
                        value=stored.value,
                        key=stored.key,
                        headers=dead_letter_headers(stored, error, self.group),
                    )
                    state.unjoined[error.reason] = state.unjoined.get(error.reason, 0) + 1
                    self.metrics.unjoined.labels(result.kind, result.reason).inc()
        finally:  # counted once per batch: a counter's lock per example showed in profiles
            state.joined += joined
            self.metrics.joined.inc(joined)


def _now_ms() -> int:
    return int(time.time() * 1000)
