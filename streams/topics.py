"""eddy's topics: their names (behind a configurable prefix) and their creation.

Topics are created with explicit partition counts before any worker starts
(faust and the join both need co-partitioned inputs). The data topics share one
partition count; the control, metrics and dead-letter topics have one partition
each, so that their events keep a single total order.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass

from aiokafka import TopicPartition
from aiokafka.admin import AIOKafkaAdminClient, NewTopic
from aiokafka.errors import TopicAlreadyExistsError, for_code

from streams.exceptions import TopicError
from streams.kafka import end_offsets, make_consumer, start_admin
from streams.settings import Settings

log = logging.getLogger(__name__)

DATA_TOPICS = ("samples", "labels", "examples", "predictions")
SINGLE_PARTITION_TOPICS = ("metrics", "events", "deadletter")


@dataclass(frozen=True)
class Topics:
    """Full topic names for one prefix.

    >>> Topics("eddy.").samples
    'eddy.samples'
    """

    prefix: str

    @property
    def samples(self) -> str:
        """Feature events produced by users (key: event id)."""
        return self.prefix + "samples"

    @property
    def labels(self) -> str:
        """Label events, often late (key: event id, co-partitioned with samples)."""
        return self.prefix + "labels"

    @property
    def examples(self) -> str:
        """Joined, labelled examples (key: model stream)."""
        return self.prefix + "examples"

    @property
    def predictions(self) -> str:
        """Predictions tagged with the model version that made them."""
        return self.prefix + "predictions"

    @property
    def metrics(self) -> str:
        """Periodic metric snapshots."""
        return self.prefix + "metrics"

    @property
    def events(self) -> str:
        """Control events (CloudEvents): drift, retrain, model updated/exported/promoted."""
        return self.prefix + "events"

    @property
    def deadletter(self) -> str:
        """Events that failed decoding or their schema, with headers naming why."""
        return self.prefix + "deadletter"

    def kind(self, topic: str) -> str:
        """The short name of one of eddy's topics (``samples``…), else ``other``.

        Metric labels use it, so their set stays bounded whatever topics exist.
        """
        short = topic.removeprefix(self.prefix)
        known = short in DATA_TOPICS or short in SINGLE_PARTITION_TOPICS
        return short if topic.startswith(self.prefix) and known else "other"

    def partition_counts(self, data_partitions: int) -> dict[str, int]:
        """Every topic's full name with the partition count it is created with."""
        counts = {getattr(self, name): data_partitions for name in DATA_TOPICS}
        counts.update({getattr(self, name): 1 for name in SINGLE_PARTITION_TOPICS})
        return counts


async def create_topics(settings: Settings) -> dict[str, str]:
    """Create every eddy topic; idempotent.

    Returns ``{topic: "created" | "exists"}``. A topic that exists with a different
    partition count raises :class:`TopicError`, since the join and faust's
    changelogs would silently misbehave on it.
    """
    wanted = Topics(settings.topic_prefix).partition_counts(settings.partitions)
    admin = await start_admin(settings)
    try:
        response = await admin.create_topics(
            [NewTopic(name, n, settings.replication_factor) for name, n in wanted.items()]
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
                f"topic {topic!r} exists with {have} partitions but eddy needs {wanted[topic]}; "
                "delete it, or set --partitions / EDDY_PARTITIONS to match"
            )
            raise TopicError(msg)
    for topic, what in result.items():
        log.info("topic %s: %s (%d partitions)", topic, what, wanted[topic])
    return result


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


async def topic_sizes(settings: Settings) -> dict[str, tuple[int, int]]:
    """``{topic: (partitions, messages)}`` for every eddy topic that exists."""
    names = list(Topics(settings.topic_prefix).partition_counts(settings.partitions))
    consumer = make_consumer(settings, "inspect", enable_auto_commit=False)
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
