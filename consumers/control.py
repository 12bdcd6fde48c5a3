"""A consumer of control events that does durable work once per event.

Contract: an event's offset is committed only after its handler returned, i.e.
after its work is durable; a crash mid-work redoes the event. Handlers are
idempotent (the registry is asked first whether the work exists), and events
already handled are skipped by their CloudEvents identity (source + id), which
is remembered in the data directory, so a replayed or re-sent event is not
acted on twice. With signing on, an event whose sequence number is not above the
last one of its source and subject is a replay and is refused.

A request that cannot be served (a stream with no examples, a window too small, a
version that fails its checksums, a bug in a model) is *refused*: the reason goes to
the maintenance log and a ``maintenance.refused`` event, the offset is committed, and
the consumer goes on with the next request. Only a Kafka failure stops it (the
request is then redone on restart).

Garbage on the events topic is dead-lettered by one consumer group only (the
retrainer's, ``dead_letters=True``), so it lands on the dead-letter topic once.
"""

from __future__ import annotations

import asyncio
import json
import logging
import os
import time
import uuid
from abc import ABC, abstractmethod
from pathlib import Path
from typing import Any

import orjson
from aiokafka import AIOKafkaProducer, ConsumerRecord, TopicPartition
from aiokafka.errors import KafkaError
from prometheus_client import CollectorRegistry

from eddy.streams.kafka.admin import wait_for_topics
from eddy.streams.kafka.clients import close_client, getmany_until, make_consumer
from eddy.streams.kafka.topics import Topics
from eddy.streams.observe.metrics import ControlMetrics, EngineMetrics
from eddy.streams.records import Record
from eddy.streams.settings import Settings
from eddy.streams.state.registry_topic import KafkaRegistry
from eddy.streams.wire.codec import (
    SEQUENCE_ATTRIBUTE,
    ControlEvent,
    DecodeError,
    Sequences,
    decode_event,
    make_event,
)
from eddy.streams.wire.deadletter import DeadLetterQueue
from eddy.streams.wire.keys import signing_key

log = logging.getLogger(__name__)


class Replayed(DecodeError):
    """A signed control event older than one already seen from its source: a replay."""

    reason = "replayed"


class ControlConsumer(ABC):
    """Handles control events of ``types`` from the events topic, in group ``name``."""

    name = "control"
    types: tuple[str, ...] = ()
    dead_letters = False  # whether this group dead-letters events that fail decoding

    def __init__(
        self,
        settings: Settings,
        producer: AIOKafkaProducer,
        metrics: ControlMetrics | None = None,
        registry: CollectorRegistry | None = None,
    ) -> None:
        self.settings = settings
        self.producer = producer
        self.metrics = metrics or ControlMetrics.create(CollectorRegistry())
        self.topics = Topics(settings.topics.prefix)
        self.group = f"{settings.topics.prefix}{self.name}"
        self.source = f"eddy/{settings.topics.prefix}{self.name}"
        self.signing_key = signing_key(settings.state)
        self.registry = KafkaRegistry(
            settings.kafka,
            settings.topics.prefix,
            settings.data_dir / "registry",
            self.signing_key,
            producer,
        )
        edge = EngineMetrics.create(registry or CollectorRegistry())
        self.dlq = DeadLetterQueue(
            producer,
            self.topics.deadletter,
            edge,
            self.topics.kind,
            self.group,
            settings.kafka.max_message_bytes - 16 * 1024,
        )
        self._stopping = asyncio.Event()
        self.ready = asyncio.Event()  # set once the group has given this consumer its partitions
        self._seen_path = settings.data_dir / "consumers" / f"{self.group}.handled.jsonl"
        self._seen = _load_seen(self._seen_path)
        self._sequences = Sequences()
        self.handled = 0
        self.refused = 0

    @abstractmethod
    async def handle(self, event: ControlEvent) -> None:
        """Do the work of one event; raise to have it refused (or redone, for Kafka)."""

    def subject_of(self, event: ControlEvent) -> str:
        """The model an event is about (for the refusal's record)."""
        return str(event.data.get("model") or event.data.get("stream") or event.subject or "-")

    async def emit(
        self, event_type: str, data: dict[str, Any], subject: str, event_id: str
    ) -> dict[str, Any]:
        """Publish a control event and wait until the broker has it."""
        event = make_event(
            event_type,
            self.source,
            data,
            subject=subject,
            event_id=event_id,
            signing_key=self.signing_key,
        )
        await self.producer.send_and_wait(
            self.topics.events, orjson.dumps(event), key=subject.encode()
        )
        return event

    async def run(self) -> None:
        """Consume until :meth:`stop` (once every eddy topic exists)."""
        if not await wait_for_topics(self.producer, self.topics.all(), self.name, self._stopping):
            return
        consumer = make_consumer(
            self.settings.kafka,
            self.name,
            self.topics.events,
            group_id=self.group,
            enable_auto_commit=False,
            auto_offset_reset="earliest",
            session_timeout_ms=self.settings.kafka.session_timeout_ms,
            heartbeat_interval_ms=max(self.settings.kafka.session_timeout_ms // 3, 100),
            max_poll_interval_ms=30 * 60 * 1000,  # a retrain may take minutes
        )
        await consumer.start()
        try:
            await self.registry.sync()
            while not self._stopping.is_set():
                batch = await getmany_until(consumer, self._stopping, 200, 50)
                if consumer.assignment():
                    self.ready.set()
                for tp, records in batch.items():
                    for record in records:
                        if self._stopping.is_set():
                            return
                        await self._one(record)
                        offsets = {TopicPartition(tp.topic, tp.partition): record.offset + 1}
                        try:
                            # Bounded: without a coordinator aiokafka retries for good.
                            await asyncio.wait_for(consumer.commit(offsets), 10)
                        except TimeoutError:
                            log.warning(
                                "%s: commit of offset %d timed out; the event is "
                                "recorded as handled, a redelivery is skipped",
                                self.name,
                                record.offset + 1,
                            )
        finally:
            await close_client(consumer)
            await self.registry.close()

    async def _one(self, record: ConsumerRecord) -> None:
        handled = self.metrics.handled
        try:
            event = decode_event(
                record.value, self.settings.kafka.max_message_bytes, self.signing_key
            )
            if self.signing_key is not None and not self._fresh(event):
                msg = (
                    f"control event {event.id!r} of {event.source} is older than one "
                    "already seen from that source about that subject: a replay"
                )
                raise Replayed(msg)
        except DecodeError as ex:
            handled.labels(self.name, "unknown", ex.reason).inc()
            if self.dead_letters:
                await self.dlq.send(Record.of(record), ex)
            else:
                log.debug("%s: skipping a control event: %s", self.name, ex)
            return
        if event.type not in self.types:
            return
        key = f"{event.source} {event.id}"
        if key in self._seen:
            log.info("%s: %s %s already handled; skipped", self.name, event.type, event.id)
            handled.labels(self.name, event.type, "skipped").inc()
            return
        log.info("%s: handling %s %s", self.name, event.type, event.id)
        started = time.monotonic()
        try:
            await self.handle(event)
        except (KafkaError, asyncio.CancelledError):
            handled.labels(self.name, event.type, "failed").inc()
            raise  # redone after a restart: nothing durable was claimed
        except Exception as ex:  # noqa: BLE001 - any other failure refuses this one request
            await self._refuse(event, ex)
            handled.labels(self.name, event.type, "refused").inc()
        else:
            self.metrics.duration.labels(self.name).observe(time.monotonic() - started)
            handled.labels(self.name, event.type, "done").inc()
            self.handled += 1
        _remember(self._seen_path, key)
        self._seen.add(key)

    def _fresh(self, event: ControlEvent) -> bool:
        seq = (event.extensions or {}).get(SEQUENCE_ATTRIBUTE)
        return isinstance(seq, int) and self._sequences.fresh(event.source, event.subject, seq)

    async def _refuse(self, event: ControlEvent, error: BaseException) -> None:
        """Record a request that cannot be served, and announce it."""
        self.refused += 1
        model = self.subject_of(event)
        reason = f"{type(error).__name__}: {error}"[:2000]
        log.warning("%s: refused %s %s for %r: %s", self.name, event.type, event.id, model, reason)
        if model != "-" and _is_name(model):
            await self.registry.log(
                f"{self.name}-refused", model, None, why=f"{event.type} {event.id}", result=reason
            )
        data = {
            "consumer": self.name,
            "model": model[:256],
            "reason": reason,
            "request": {"type": f"eddy.{event.type}", "id": event.id, "source": event.source},
        }
        event_id = str(uuid.uuid5(uuid.NAMESPACE_URL, f"{event.source}/{event.id}/refused"))
        await self.emit("maintenance.refused", data, model[:256] or "-", event_id)

    def stop(self) -> None:
        """Stop after the current event."""
        self._stopping.set()


def _is_name(text: str) -> bool:
    from eddy.streams.wire.codec import valid_stream_name

    return valid_stream_name(text)


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
