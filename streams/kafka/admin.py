"""Creating eddy's topics and checking that they exist, through Kafka's admin API.

Topic names and configs are :mod:`eddy.streams.kafka.topics`; nothing creates topics
implicitly (eddy never relies on auto-creation).
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import time
from collections.abc import Iterable

from aiokafka import AIOKafkaProducer, TopicPartition
from aiokafka.admin import AIOKafkaAdminClient, NewTopic
from aiokafka.errors import KafkaError, TopicAlreadyExistsError, for_code

from eddy.streams.exceptions import TopicError
from eddy.streams.kafka.clients import end_offsets, make_consumer, start_admin
from eddy.streams.kafka.topics import Topics, topic_configs
from eddy.streams.settings import KafkaConfig, TopicConfig

log = logging.getLogger(__name__)


async def create_topics(kafka: KafkaConfig, config: TopicConfig) -> dict[str, str]:
    """Create every eddy topic with its partition count and configs; idempotent.

    Returns ``{topic: "created" | "exists"}``. A topic that exists with a different
    partition count raises :class:`TopicError`: the co-partitioned inputs of a worker
    partition would silently misbehave on it.
    """
    topics = Topics(config.prefix)
    wanted = topics.partition_counts(config.partitions)
    configs = topic_configs(topics, kafka)
    admin = await start_admin(kafka)
    try:
        response = await admin.create_topics(
            [
                NewTopic(name, n, config.replication_factor, topic_configs=configs[name])
                for name, n in wanted.items()
            ]
        )
        result: dict[str, str] = {}
        for topic, code, message in _topic_errors(response):
            if code == 0:
                result[topic] = "created"
            elif code == TopicAlreadyExistsError.errno:
                result[topic] = "exists"
            else:
                msg = f"could not create topic {topic!r}: {for_code(code).__name__}: {message}"
                raise TopicError(msg)
        existing = await _partition_counts(admin, [t for t, r in result.items() if r == "exists"])
    finally:
        await admin.close()
    for topic, have in existing.items():
        if have != wanted[topic]:
            msg = (
                f"topic {topic!r} exists with {have} partitions but eddy needs {wanted[topic]} "
                "(a topic some client created on first use gets the broker's default count); "
                "delete it, or set --partitions / EDDY_PARTITIONS to match"
            )
            raise TopicError(msg)
    for topic, what in result.items():
        log.info("topic %s: %s (%d partitions)", topic, what, wanted[topic])
    return result


_CREATE_THEM = (
    "create them with `eddy topics create` (eddy's clients never create topics on first "
    "use: the broker's default partition count would break the join)"
)


async def missing_topics(producer: AIOKafkaProducer, names: Iterable[str]) -> list[str]:
    """Those of ``names`` the cluster does not have, sorted (one metadata request)."""
    metadata = await producer.client.fetch_all_metadata()
    return sorted(set(names) - metadata.topics())


async def require_topics(producer: AIOKafkaProducer, names: Iterable[str]) -> None:
    """Raise :class:`TopicError` naming every one of ``names`` that does not exist."""
    missing = await missing_topics(producer, names)
    if missing:
        msg = f"topic(s) {', '.join(missing)} do not exist; {_CREATE_THEM}"
        raise TopicError(msg)


async def wait_for_topics(
    producer: AIOKafkaProducer,
    names: Iterable[str],
    role: str,
    stop: asyncio.Event,
    poll_s: float = 1.0,
    remind_s: float = 30.0,
) -> bool:
    """Wait until every one of ``names`` exists; False if ``stop`` was set first.

    For services that may start before the topics are created (a compose file
    starting everything at once): one warning naming what is missing, repeated
    every ``remind_s``, and one line once they are there. An unreachable broker
    counts as not there yet.
    """
    wanted, started, reminded = list(names), time.monotonic(), None
    while not stop.is_set():
        try:
            missing = await asyncio.wait_for(missing_topics(producer, wanted), poll_s * 5)
            why = f"topic(s) {', '.join(missing)}; {_CREATE_THEM}"
        except (KafkaError, OSError, TimeoutError) as ex:
            missing, why = wanted, f"Kafka to answer a metadata request ({ex!r})"
        if not missing:
            if reminded is not None:
                log.info("%s: topics present after %.0f s", role, time.monotonic() - started)
            return True
        if reminded is None or time.monotonic() - reminded >= remind_s:
            reminded = time.monotonic()
            log.warning("%s: waiting for %s", role, why)
        with contextlib.suppress(TimeoutError):
            await asyncio.wait_for(stop.wait(), poll_s)
    return False


def _topic_errors(response: object) -> list[tuple[str, int, str | None]]:
    rows = []
    for entry in response.topic_errors:  # type: ignore[attr-defined]
        topic, code, *rest = entry
        rows.append((topic, code, rest[0] if rest else None))
    return rows


async def _partition_counts(admin: AIOKafkaAdminClient, topics: list[str]) -> dict[str, int]:
    if not topics:
        return {}
    described = await admin.describe_topics(topics)
    return {d["topic"]: len(d["partitions"]) for d in described}


async def topic_sizes(kafka: KafkaConfig, config: TopicConfig) -> dict[str, tuple[int, int]]:
    """``{topic: (partitions, messages)}`` for every eddy topic that exists."""
    names = list(Topics(config.prefix).partition_counts(config.partitions))
    consumer = make_consumer(kafka, "inspect", enable_auto_commit=False)
    await consumer.start()
    try:
        existing = await consumer.topics()
        parts = [
            TopicPartition(t, p)
            for t in names
            if t in existing
            for p in sorted(consumer.partitions_for_topic(t) or ())
        ]
        if not parts:
            return {}
        starts = await consumer.beginning_offsets(parts)
        ends = await end_offsets(consumer, parts)
    finally:
        await consumer.stop()
    sizes: dict[str, tuple[int, int]] = {}
    for tp in parts:
        n_parts, n_msgs = sizes.get(tp.topic, (0, 0))
        sizes[tp.topic] = (n_parts + 1, n_msgs + ends[tp] - starts[tp])
    return sizes
