"""eddy's topics: their names (behind a configurable prefix), partition counts and
configs. Creating them is :mod:`eddy.streams.kafka.admin`.

Topics are created with explicit partition counts before any worker starts
(faust and the join both need co-partitioned inputs). The data topics share one
partition count; the control, metrics and dead-letter topics have one partition
each, so that their events keep a single total order.
"""

from __future__ import annotations

from dataclasses import dataclass

from eddy.streams.settings import KafkaConfig

DATA_TOPICS = ("samples", "labels", "repartition", "examples", "predictions", "changelog")
SINGLE_PARTITION_TOPICS = ("metrics", "events", "deadletter", "registry", "snapshots")
# Topics that hold state (latest value per key): compacted, never deleted by time.
COMPACTED = ("changelog", "registry", "snapshots")


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
    def repartition(self) -> str:
        """Internal: samples and labels forwarded to the partition that joins them, and
        examples forwarded to the partition that learns their stream."""
        return self.prefix + "repartition"

    @property
    def examples(self) -> str:
        """Learned examples, in each stream's learning order (key: model stream): the
        retrainer's windows."""
        return self.prefix + "examples"

    @property
    def changelog(self) -> str:
        """Internal, compacted: each worker partition's state, tied to its input offsets."""
        return self.prefix + "changelog"

    @property
    def registry(self) -> str:
        """Compacted: model versions (artifacts, cards), aliases, the maintenance log."""
        return self.prefix + "registry"

    @property
    def snapshots(self) -> str:
        """Compacted: recent online models of each stream, for the replicas that predict
        a stream's samples in other worker processes."""
        return self.prefix + "snapshots"

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

    def all(self) -> list[str]:
        """Every eddy topic name."""
        return [getattr(self, name) for name in (*DATA_TOPICS, *SINGLE_PARTITION_TOPICS)]

    def partition_counts(self, data_partitions: int) -> dict[str, int]:
        """Every topic's full name with the partition count it is created with."""
        counts = {getattr(self, name): data_partitions for name in DATA_TOPICS}
        counts.update({getattr(self, name): 1 for name in SINGLE_PARTITION_TOPICS})
        return counts


def topic_configs(topics: Topics, kafka: KafkaConfig) -> dict[str, dict[str, str]]:
    """The configs eddy creates its topics with (retention is the broker's default for the
    data topics: see the README's Topics section).

    State topics keep the latest value per key forever (compaction, no time retention),
    roll segments hourly so compaction can reach old checkpoints, and accept chunks of
    half ``max_message_bytes`` with headroom.
    """
    message_bytes = str(kafka.max_message_bytes + 64 * 1024)
    state = {
        "cleanup.policy": "compact",
        "retention.ms": "-1",
        "segment.ms": str(3600 * 1000),
        "min.cleanable.dirty.ratio": "0.1",
        "max.message.bytes": message_bytes,
    }
    configs = {getattr(topics, name): dict(state) for name in COMPACTED}
    for name in (*DATA_TOPICS, *SINGLE_PARTITION_TOPICS):
        configs.setdefault(getattr(topics, name), {"max.message.bytes": message_bytes})
    return configs
