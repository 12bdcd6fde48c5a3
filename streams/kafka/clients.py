"""Kafka clients built from a :class:`~eddy.streams.settings.KafkaConfig`.

One place turns the config into aiokafka options, so that bootstrap, client id and
TLS/SASL reach every producer, consumer and admin client alike, and so that no eddy
client ever creates a topic by naming it.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import ssl
import time
from collections.abc import Awaitable, Callable, Collection
from typing import Any

from aiokafka import AIOKafkaConsumer, AIOKafkaProducer, ConsumerRecord, TopicPartition
from aiokafka.admin import AIOKafkaAdminClient
from aiokafka.errors import KafkaError, UnknownError, UnsupportedVersionError
from aiokafka.protocol.metadata import MetadataRequest

from eddy.streams.exceptions import BrokerError
from eddy.streams.settings import KafkaConfig

log = logging.getLogger(__name__)


def refuse_topic_creation(client: Any) -> None:
    """Make one aiokafka client's metadata requests never create the topics they name.

    aiokafka has no ``allow.auto.create.topics`` option (KIP-361) and sets the flag on
    every metadata request, so on a broker that allows auto creation (Apache Kafka's
    default; Tansu always) a worker started before ``eddy topics create``, or
    reconnecting to a broker that lost its topics, created them with the broker's
    default partition count. This wraps the client's connections, so it changes only
    eddy's own clients: other aiokafka clients in the process behave as before.
    """
    get_conn = client._get_conn  # the one path every request of the client takes

    async def get_guarded_conn(*args: Any, **kwargs: Any) -> Any:
        conn = await get_conn(*args, **kwargs)
        if conn is not None and not getattr(conn, "_eddy_guarded", False):
            send = conn.send

            def send_without_creation(request: Any, *a: Any, **kw: Any) -> Any:
                if isinstance(request, MetadataRequest):
                    request._allow_auto_topic_creation = False
                return send(request, *a, **kw)

            conn.send = send_without_creation
            conn._eddy_guarded = True
        return conn

    client._get_conn = get_guarded_conn


def client_options(kafka: KafkaConfig, role: str) -> dict[str, Any]:
    """The connection options every aiokafka client of eddy gets.

    ``role`` names the client (``producer``, ``worker``…) in the client id, so the
    broker's logs tell eddy's clients apart.
    """
    if not kafka.bootstrap:
        msg = (
            "no Kafka broker configured: pass --bootstrap host:port (or set EDDY_BOOTSTRAP), "
            "or start the embedded one with `eddy broker` or `eddy up`"
        )
        raise BrokerError(msg)
    options: dict[str, Any] = {
        "bootstrap_servers": kafka.bootstrap,
        "client_id": f"{kafka.client_id}-{role}",
        "security_protocol": kafka.security_protocol,
    }
    if kafka.security_protocol in ("SSL", "SASL_SSL"):
        context = ssl.create_default_context(
            cafile=str(kafka.ssl_cafile) if kafka.ssl_cafile else None
        )
        if kafka.ssl_certfile:
            context.load_cert_chain(
                str(kafka.ssl_certfile), str(kafka.ssl_keyfile) if kafka.ssl_keyfile else None
            )
        options["ssl_context"] = context
    if kafka.security_protocol.startswith("SASL"):
        assert kafka.sasl_password is not None  # KafkaConfig refuses SASL without one
        options["sasl_mechanism"] = kafka.sasl_mechanism
        options["sasl_plain_username"] = kafka.sasl_username
        options["sasl_plain_password"] = kafka.sasl_password.reveal()
    return options


class _ExpectedRefusal(logging.Filter):
    """Hides aiokafka's ERROR line for the InitProducerId refusal that ``auto`` expects."""

    def filter(self, record: logging.LogRecord) -> bool:
        return "InitProducerId" not in record.getMessage()


async def start_producer(
    kafka: KafkaConfig, role: str = "producer", **extra: Any
) -> AIOKafkaProducer:
    """Start a producer with ``acks=all``; idempotent unless the broker cannot do it.

    With ``producer_idempotence=auto`` a broker that refuses InitProducerId (the
    embedded Tansu does) gets a non-idempotent ``acks=all`` producer and one INFO line.
    """
    options = client_options(kafka, role)
    options.update(acks="all", max_request_size=kafka.max_message_bytes + 64 * 1024)
    options.update(extra)
    mode = kafka.producer_idempotence
    producer = AIOKafkaProducer(enable_idempotence=mode != "off", **options)
    refuse_topic_creation(producer.client)
    sender_log = logging.getLogger("aiokafka.producer.sender")
    quiet = _ExpectedRefusal()
    if mode == "auto":
        sender_log.addFilter(quiet)
    refusals = (UnknownError, UnsupportedVersionError)
    try:
        await _start(producer, producer.stop, options, passthrough=refusals)
    except refusals as ex:
        if mode == "on":
            msg = (
                f"the broker at {options['bootstrap_servers']} refused an idempotent producer "
                f"({ex!r}); set EDDY_PRODUCER_IDEMPOTENCE=auto or off for this broker"
            )
            raise BrokerError(msg) from ex
        log.info(
            "broker %s does not offer idempotent producers (as the embedded broker): "
            "producing with acks=all",
            options["bootstrap_servers"],
        )
        producer = AIOKafkaProducer(enable_idempotence=False, **options)
        refuse_topic_creation(producer.client)
        await _start(producer, producer.stop, options)
    finally:
        sender_log.removeFilter(quiet)
    return producer


def make_consumer(kafka: KafkaConfig, role: str, *topics: str, **extra: Any) -> AIOKafkaConsumer:
    """A consumer (not started) with eddy's connection options; ``extra`` wins.

    Fetches wait at most ``fetch_max_wait_ms``: the embedded broker answers a fetch
    only when its wait ends, and stopping a consumer waits for its fetch in flight.
    """
    options = client_options(kafka, role)
    options["fetch_max_wait_ms"] = kafka.fetch_max_wait_ms
    options.update(extra)
    consumer = AIOKafkaConsumer(*topics, **options)
    refuse_topic_creation(consumer._client)
    return consumer


async def start_consumer(consumer: AIOKafkaConsumer) -> AIOKafkaConsumer:
    """Start ``consumer``; an unreachable broker is a :class:`BrokerError` saying so (and
    the consumer is closed)."""
    bootstrap = {"bootstrap_servers": consumer._client._bootstrap_servers}
    await _start(consumer, lambda: close_client(consumer), bootstrap)
    return consumer


async def start_admin(kafka: KafkaConfig) -> AIOKafkaAdminClient:
    """Start an admin client with eddy's connection options."""
    options = client_options(kafka, "admin")
    admin = AIOKafkaAdminClient(**options)
    refuse_topic_creation(admin._client)
    await _start(admin, admin.close, options)
    return admin


async def _start(
    client: Any,
    close: Callable[[], Awaitable[Any]],
    options: dict[str, Any],
    passthrough: tuple[type[Exception], ...] = (),
) -> None:
    """Start a Kafka client; if that fails, close it and raise a :class:`BrokerError`
    naming the broker (``passthrough`` errors are raised as they are, after closing)."""
    try:
        await client.start()
    except KafkaError as ex:
        await close()
        if isinstance(ex, passthrough):
            raise
        raise _unreachable(options, ex) from ex


def _unreachable(options: dict[str, Any], ex: Exception) -> BrokerError:
    msg = (
        f"could not connect to Kafka at {options['bootstrap_servers']} ({ex!r}); "
        "check --bootstrap / EDDY_BOOTSTRAP and that the broker is running"
    )
    return BrokerError(msg)


def assign(consumer: AIOKafkaConsumer, partitions: list[TopicPartition]) -> None:
    """Assign ``partitions`` to ``consumer`` unless they are its assignment already.

    Re-assigning the same partitions while a fetch is in flight leaves aiokafka's
    fetcher waiting for that fetch, so a later ``stop()`` hangs (seen with aiokafka 0.14).
    """
    if consumer.assignment() != set(partitions):
        consumer.assign(partitions)


async def getmany_until(
    consumer: AIOKafkaConsumer,
    stop: asyncio.Event,
    timeout_ms: int,
    max_records: int,
    partitions: Collection[TopicPartition] = (),
) -> dict[TopicPartition, list[ConsumerRecord]]:
    """``consumer.getmany(*partitions, timeout_ms=…, max_records=…)``, or ``{}`` once
    ``stop`` is set (no ``partitions``: every assigned one).

    aiokafka's ``getmany`` ignores its timeout while the group rebalances, and a
    rebalance lasts as long as the group cannot form (a broker back without the
    topics it had): a consumer loop built on it alone would not notice SIGTERM.
    """
    if stop.is_set():
        return {}
    fetch = asyncio.ensure_future(
        consumer.getmany(*partitions, timeout_ms=timeout_ms, max_records=max_records)
    )
    stopped = asyncio.ensure_future(stop.wait())
    try:
        await asyncio.wait((fetch, stopped), return_when=asyncio.FIRST_COMPLETED)
    finally:
        stopped.cancel()
        if not fetch.done():
            fetch.cancel()  # records it had not handed over stay in aiokafka's buffer
    return fetch.result() if fetch.done() and not fetch.cancelled() else {}


async def close_client(client: AIOKafkaConsumer | AIOKafkaProducer, within_s: float = 5.0) -> None:
    """Stop a consumer (leaving its group) or producer in at most ``within_s``; never raises.

    For the end of long-running loops and processes, which must end even with Kafka
    gone: a LeaveGroup then waits for a coordinator forever, a producer's flush for
    its request timeout, and aiokafka's fetcher re-raises the cancellation of its own
    pending fetch as ``CancelledError``. A cancellation of the caller still propagates.
    Whatever a producer had not delivered by then is lost: callers checkpoint only
    acknowledged work.
    """
    try:
        await asyncio.wait_for(client.stop(), within_s)
    except asyncio.CancelledError:
        task = asyncio.current_task()
        if task is not None and task.cancelling():
            raise
    except Exception as ex:  # noqa: BLE001 - the process is leaving; say why, go on
        log.debug("%s did not stop cleanly (%r)", type(client).__name__, ex)


async def end_offsets(
    consumer: AIOKafkaConsumer, partitions: list[TopicPartition], within: float = 5.0
) -> dict[TopicPartition, int]:
    """The true end offset (high watermark) of each partition.

    Tansu answers ListOffsets(latest) with the base offset of the last record
    batch, not the offset after its last record, so ``consumer.end_offsets`` runs
    short by up to a batch there. A Fetch response carries the correct high
    watermark, so this fetches from that point and takes the larger of the two.
    It reassigns ``consumer`` to ``partitions``; use a consumer of its own.
    """
    listed = await consumer.end_offsets(partitions)
    assign(consumer, partitions)
    for tp in partitions:
        consumer.seek(tp, listed[tp])
    deadline = asyncio.get_running_loop().time() + within
    while any(consumer.highwater(tp) is None for tp in partitions):
        if asyncio.get_running_loop().time() > deadline:
            break
        await consumer.getmany(*partitions, timeout_ms=100)
    return {tp: max(listed[tp], consumer.highwater(tp) or 0) for tp in partitions}


async def read_records(
    kafka: KafkaConfig, topic: str, within: float = 30.0
) -> list[ConsumerRecord]:
    """Every record of ``topic`` now, from the start to its end offsets, partition by partition."""
    consumer = make_consumer(kafka, "reader", enable_auto_commit=False)
    await consumer.start()
    try:
        await consumer.topics()  # refresh metadata for every topic
        parts = [
            TopicPartition(topic, p) for p in sorted(consumer.partitions_for_topic(topic) or ())
        ]
        if not parts:
            return []
        ends = await end_offsets(consumer, parts)
        for tp in parts:
            consumer.seek(tp, 0)
        records: list[ConsumerRecord] = []
        remaining = {tp for tp in parts if ends[tp] > 0}
        deadline = asyncio.get_running_loop().time() + within
        while remaining:
            if asyncio.get_running_loop().time() > deadline:
                msg = f"reading {topic} did not reach its end offsets {ends} within {within}s"
                raise BrokerError(msg)
            batch = await consumer.getmany(*remaining, timeout_ms=200)
            for tp, batch_records in batch.items():
                records.extend(r for r in batch_records if r.offset < ends[tp])
                if batch_records and batch_records[-1].offset >= ends[tp] - 1:
                    remaining.discard(tp)
        return records
    finally:
        await consumer.stop()


async def read_range(
    kafka: KafkaConfig, topic: str, partition: int, start: int, end: int, within: float = 30.0
) -> list[ConsumerRecord]:
    """Records of one partition with offsets in ``[start, end)`` (fewer if the deadline passes)."""
    consumer = make_consumer(kafka, "range-reader", enable_auto_commit=False)
    await consumer.start()
    try:
        tp = TopicPartition(topic, partition)
        assign(consumer, [tp])
        consumer.seek(tp, start)
        records: list[ConsumerRecord] = []
        deadline = asyncio.get_running_loop().time() + within
        while asyncio.get_running_loop().time() < deadline:
            batch = await consumer.getmany(tp, timeout_ms=200, max_records=10_000)
            for record in batch.get(tp, []):
                if record.offset >= end:
                    return records
                records.append(record)
            if records and records[-1].offset >= end - 1:
                break
        return records
    finally:
        await consumer.stop()


async def partition_end(kafka: KafkaConfig, topic: str, partition: int) -> int:
    """The true end offset of one partition."""
    consumer = make_consumer(kafka, "offsets", enable_auto_commit=False)
    await consumer.start()
    try:
        tp = TopicPartition(topic, partition)
        return (await end_offsets(consumer, [tp]))[tp]
    finally:
        await consumer.stop()


async def watch_connectivity(
    producer: AIOKafkaProducer,
    where: str,
    stop: asyncio.Event,
    on_change: Callable[[bool], None] = lambda up: None,
    every_s: float = 2.0,
    role: str = "worker",
) -> None:
    """Ask the cluster for metadata every ``every_s``; log when Kafka goes and comes back.

    aiokafka reconnects by itself; this makes an outage visible (one warning when it
    starts, one line when it ends, with its length) and calls ``on_change``.
    """
    up, since = True, time.monotonic()
    while not stop.is_set():
        try:
            await asyncio.wait_for(producer.client.fetch_all_metadata(), every_s * 2)
            reachable = True
        except (KafkaError, OSError, TimeoutError):
            reachable = False
        if reachable != up:
            elapsed = time.monotonic() - since
            since = time.monotonic()
            up = reachable
            on_change(up)
            if up:
                log.warning("%s: Kafka is reachable again after %.0f s", role, elapsed)
            else:
                log.warning(
                    "%s: Kafka at %s does not answer: agents wait and reconnect by "
                    "themselves, then resume from their checkpoints",
                    role,
                    where,
                )
        with contextlib.suppress(TimeoutError):
            await asyncio.wait_for(stop.wait(), every_s)
