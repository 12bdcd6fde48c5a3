"""A consumer of control events that does durable work once per event.

Contract: an event's offset is committed only after its handler returned, i.e.
after its work is durable; a crash mid-work redoes the event. Handlers are
idempotent (the registry is asked first whether the work exists), and events
already handled are skipped by their CloudEvents identity (source + id), which
is remembered in the data directory, so a replayed or re-sent event is not
acted on twice.
"""

from __future__ import annotations

import asyncio
import json
import logging
import os
import time
from abc import ABC, abstractmethod
from pathlib import Path
from typing import Any

import orjson
from aiokafka import AIOKafkaProducer, TopicPartition
from prometheus_client import CollectorRegistry

from eddy.streams.codec import ControlEvent, DecodeError, decode_event, make_event
from eddy.streams.kafka import close_client, getmany_until, make_consumer
from eddy.streams.metrics import ControlMetrics
from eddy.streams.settings import Settings
from eddy.streams.topics import Topics, wait_for_topics

log = logging.getLogger(__name__)


class ControlConsumer(ABC):
    """Handles control events of ``types`` from the events topic, in group ``name``."""

    name = "control"
    types: tuple[str, ...] = ()

    def __init__(
        self,
        settings: Settings,
        producer: AIOKafkaProducer,
        metrics: ControlMetrics | None = None,
    ) -> None:
        self.settings = settings
        self.producer = producer
        self.metrics = metrics or ControlMetrics.create(CollectorRegistry())
        self.topics = Topics(settings.topic_prefix)
        self.group = f"{settings.topic_prefix}{self.name}"
        self.source = f"eddy/{settings.topic_prefix}{self.name}"
        self._stopping = asyncio.Event()
        self.ready = asyncio.Event()  # set once the group has given this consumer its partitions
        self._seen_path = settings.data_dir / "consumers" / f"{self.group}.handled.jsonl"
        self._seen = _load_seen(self._seen_path)
        self.handled = 0

    @abstractmethod
    async def handle(self, event: ControlEvent) -> None:
        """Do the work of one event; raise to have it redone."""

    async def emit(
        self, event_type: str, data: dict[str, Any], subject: str, event_id: str
    ) -> dict[str, Any]:
        """Publish a control event and wait until the broker has it."""
        event = make_event(
            event_type, self.source, data, subject=subject, event_id=event_id,
            signing_key=self.settings.event_signing_key,
        )  # fmt: skip
        await self.producer.send_and_wait(
            self.topics.events, orjson.dumps(event), key=subject.encode()
        )
        return event

    async def run(self) -> None:
        """Consume until :meth:`stop` (once every eddy topic exists)."""
        if not await wait_for_topics(self.producer, self.topics.all(), self.name, self._stopping):
            return
        consumer = make_consumer(
            self.settings, self.name, self.topics.events, group_id=self.group,
            enable_auto_commit=False, auto_offset_reset="earliest",
            session_timeout_ms=self.settings.session_timeout_ms,
            heartbeat_interval_ms=max(self.settings.session_timeout_ms // 3, 100),
            max_poll_interval_ms=30 * 60 * 1000,  # a retrain may take minutes
        )  # fmt: skip
        await consumer.start()
        try:
            while not self._stopping.is_set():
                batch = await getmany_until(consumer, self._stopping, 200, 50)
                if consumer.assignment():
                    self.ready.set()
                for tp, records in batch.items():
                    for record in records:
                        if self._stopping.is_set():
                            return
                        await self._one(record.value)
                        offsets = {TopicPartition(tp.topic, tp.partition): record.offset + 1}
                        try:
                            # Bounded: without a coordinator aiokafka retries for good.
                            await asyncio.wait_for(consumer.commit(offsets), 10)
                        except TimeoutError:
                            log.warning("%s: commit of offset %d timed out; the event is "
                                        "recorded as handled, a redelivery is skipped",
                                        self.name, record.offset + 1)  # fmt: skip
        finally:
            await close_client(consumer)

    async def _one(self, raw: bytes) -> None:
        try:
            event = decode_event(
                raw, self.settings.max_message_bytes, self.settings.event_signing_key
            )
        except DecodeError as ex:
            log.warning("%s: skipping a control event: %s", self.name, ex)
            self.metrics.handled.labels(self.name, "unknown", ex.reason).inc()
            return
        if event.type not in self.types:
            return
        key = f"{event.source} {event.id}"
        handled = self.metrics.handled
        if key in self._seen:
            log.info("%s: %s %s already handled; skipped", self.name, event.type, event.id)
            handled.labels(self.name, event.type, "skipped").inc()
            return
        log.info("%s: handling %s %s", self.name, event.type, event.id)
        started = time.monotonic()
        try:
            await self.handle(event)
        except BaseException:
            handled.labels(self.name, event.type, "failed").inc()
            raise
        self.metrics.duration.labels(self.name).observe(time.monotonic() - started)
        _remember(self._seen_path, key)
        self._seen.add(key)
        self.handled += 1
        handled.labels(self.name, event.type, "done").inc()

    def stop(self) -> None:
        """Stop after the current event."""
        self._stopping.set()


def _load_seen(path: Path) -> set[str]:
    if not path.exists():
        return set()
    return {json.loads(line) for line in path.read_text().splitlines() if line.strip()}


def _remember(path: Path, key: str) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    with open(path, "a") as f:
        f.write(json.dumps(key) + "\n")
        f.flush()
        os.fsync(f.fileno())
