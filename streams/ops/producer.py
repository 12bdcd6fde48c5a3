"""``eddy produce``: send samples and (possibly late, possibly missing) labels to Kafka.

Labels go to the labels topic ``label_delay`` samples after their sample, or
inline in the sample; a seeded fraction can be withheld to model labels that
never arrive. Samples and labels are keyed by event id, so that both land on the
same partition of their co-partitioned topics.
"""

from __future__ import annotations

import asyncio
import itertools
import random
import time
import uuid
from collections import deque
from collections.abc import Callable, Iterable
from dataclasses import dataclass
from typing import Any

from eddy.streams.kafka.admin import require_topics
from eddy.streams.kafka.clients import start_producer
from eddy.streams.kafka.topics import Topics
from eddy.streams.settings import KafkaConfig
from eddy.streams.wire.codec import Label, Sample, encode_label, encode_sample, now_ms

# How many sends may be in flight before we wait for their acknowledgements.
_IN_FLIGHT = 2000


@dataclass(frozen=True)
class ProduceOptions:
    """How to send: how many, how late the labels, how fast."""

    n: int | None = None
    label_delay: int = 0
    label_drop: float = 0.0
    inline_labels: bool = False
    rate: float | None = None
    seed: int = 42
    stream: str = "default"
    id_prefix: str | None = None

    def __post_init__(self) -> None:
        if self.n is not None and self.n < 0:
            msg = f"n must be >= 0, got {self.n}"
            raise ValueError(msg)
        if self.label_delay < 0:
            msg = f"label delay must be >= 0 samples, got {self.label_delay}"
            raise ValueError(msg)
        if not 0.0 <= self.label_drop <= 1.0:
            msg = f"label drop must be a fraction in [0, 1], got {self.label_drop}"
            raise ValueError(msg)
        if self.rate is not None and self.rate <= 0:
            msg = f"rate must be > 0 events/s, got {self.rate}"
            raise ValueError(msg)
        if self.inline_labels and (self.label_delay or self.label_drop):
            msg = "inline labels travel with their sample: --label-delay/--label-drop do not apply"
            raise ValueError(msg)


@dataclass(frozen=True)
class ProduceReport:
    """What was sent."""

    samples: int
    labels: int
    labels_dropped: int
    seconds: float
    id_prefix: str

    @property
    def rate(self) -> float:
        """Samples per second."""
        return self.samples / self.seconds if self.seconds > 0 else 0.0


async def produce(
    kafka: KafkaConfig,
    prefix: str,
    examples: Iterable[tuple[dict[str, Any], Any]],
    options: ProduceOptions,
    on_progress: Callable[[int], None] | None = None,
) -> ProduceReport:
    """Send ``examples`` as samples and labels to the topics of ``prefix``; return once
    the broker has them all."""
    topics = Topics(prefix)
    id_prefix = options.id_prefix or uuid.uuid4().hex[:8]
    rng = random.Random(options.seed)
    pending_labels: deque[tuple[str, Any]] = deque()
    in_flight: list[asyncio.Future[Any]] = []
    samples = labels = dropped = 0
    producer = await start_producer(kafka, "produce", linger_ms=5)
    started = time.monotonic()

    async def send(topic: str, key: str, value: bytes) -> None:
        in_flight.append(await producer.send(topic, value=value, key=key.encode()))
        if len(in_flight) >= _IN_FLIGHT:
            await _settle(in_flight)

    async def send_label(event_id: str, y: Any) -> None:
        nonlocal labels, dropped
        if options.label_drop and rng.random() < options.label_drop:
            dropped += 1
            return
        label = Label(id=event_id, label=y, ts=now_ms())
        await send(topics.labels, event_id, encode_label(label))
        labels += 1

    try:
        await require_topics(producer, [topics.samples, topics.labels])
        for i, (x, y) in enumerate(itertools.islice(examples, options.n)):
            if options.rate:
                await _pace(started, i, options.rate)
            event_id = f"{id_prefix}-{i:09d}"
            inline = y if options.inline_labels else None
            sample = Sample(
                id=event_id, features=x, ts=now_ms(), label=inline, stream=options.stream
            )
            await send(topics.samples, event_id, encode_sample(sample))
            samples += 1
            if not options.inline_labels:
                pending_labels.append((event_id, y))
                if len(pending_labels) > options.label_delay:
                    await send_label(*pending_labels.popleft())
            if on_progress is not None:
                on_progress(1)
        while pending_labels:
            await send_label(*pending_labels.popleft())
        await producer.flush()
        await _settle(in_flight)
    finally:
        await producer.stop()
    return ProduceReport(samples, labels, dropped, time.monotonic() - started, id_prefix)


async def _settle(in_flight: list[asyncio.Future[Any]]) -> None:
    # Raises the first delivery error, so a failed send is never reported as sent.
    await asyncio.gather(*in_flight)
    in_flight.clear()


async def _pace(started: float, i: int, rate: float) -> None:
    delay = started + i / rate - time.monotonic()
    if delay > 0:
        await asyncio.sleep(delay)
