"""What a unit works with, in three separate things: its configuration (frozen), the
runtime it shares with the other units of its process, and the outputs each call
returns.

Quix Streams keeps its ``ApplicationConfig`` apart from the processing context, and
bytewax writes to an explicit sink: a unit's outputs are never a list someone else
holds, but what :meth:`~eddy.streams.engine.unit.Unit.process` returns, for the agent
to ship.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from typing import Any, NamedTuple, Protocol

from eddy.models.learners import Prediction
from eddy.models.monitor.feature_drift import FeatureDriftConfig
from eddy.models.prequential import StreamSpec
from eddy.streams.engine.directory import ModelDirectory
from eddy.streams.kafka.topics import Topics
from eddy.streams.observe.metrics import EngineMetrics
from eddy.streams.settings import JoinConfig, KafkaConfig, LearningConfig, StateConfig


class Out(NamedTuple):
    """A record to produce (``partition``: the one it goes to; ``timestamp_ms``: ``None``
    for the time of sending)."""

    topic: str
    value: bytes | None
    key: bytes | None
    partition: int
    headers: Sequence[tuple[str, bytes]] = ()
    timestamp_ms: int | None = None


@dataclass
class Outputs:
    """What one call of a unit produced, by kind, each list in the order made.

    ``changed`` counts changes of state that no processed record stands for (samples
    and labels the join let go between batches): the next checkpoint must record them.
    """

    predictions: list[Out] = field(default_factory=list)
    examples: list[Out] = field(default_factory=list)
    events: list[Out] = field(default_factory=list)
    dead_letters: list[Out] = field(default_factory=list)
    forwards: list[Out] = field(default_factory=list)  # to the repartition topic
    changed: int = 0

    def records(self) -> list[Out]:
        """Every record to produce (each topic's records keep their order)."""
        return [*self.forwards, *self.predictions, *self.examples, *self.events, *self.dead_letters]

    def add(self, other: Outputs) -> Outputs:
        """Append ``other``'s outputs (those of a later call) to these; returns self."""
        self.predictions += other.predictions
        self.examples += other.examples
        self.events += other.events
        self.dead_letters += other.dead_letters
        self.forwards += other.forwards
        self.changed += other.changed
        return self

    def __len__(self) -> int:
        return (
            len(self.predictions)
            + len(self.examples)
            + len(self.events)
            + len(self.dead_letters)
            + len(self.forwards)
        )


class Predictor(Protocol):
    """A model that can predict a stream's samples: its owner, or a replica."""

    version: str
    learned: int

    def predict(self, xs: Sequence[Any]) -> list[Prediction]:
        """Predict without learning."""
        ...


class StreamPolicy(Protocol):
    """Which streams a worker learns and how (process-wide)."""

    def admit(self, stream: str) -> tuple[StreamSpec | None, str, str]:
        """``(spec, "", "")`` for a stream eddy learns, else ``(None, reason, message)``."""
        ...

    def spec(self, stream: str) -> StreamSpec:
        """The spec of an admitted stream."""
        ...


@dataclass
class Hooks:
    """Callbacks of an embedding program, called in the worker's event loop thread.

    Each gets one dict (a prediction event, a drift event's data, or an error with its
    reason); an exception in a hook is logged and does not stop the worker.
    """

    on_prediction: Callable[[dict[str, Any]], None] | None = None
    on_drift: Callable[[dict[str, Any]], None] | None = None
    on_error: Callable[[dict[str, Any]], None] | None = None


@dataclass(frozen=True)
class EngineConfig:
    """How every unit of a worker processes records (read once, never changed)."""

    topics: Topics
    partitions: int
    group: str  # consumer group id, named in dead-letter headers
    source: str  # CloudEvents source of this worker's events
    join_ttl_ms: int
    join_max_pending: int
    max_future_ms: int
    max_message_bytes: int
    max_feature_magnitude: float
    dedup_horizon: int
    feature_drift: FeatureDriftConfig | None
    feature_drift_cooldown_s: float = 60.0
    merge_wait_s: float = 0.5  # see InputMerger
    merge_grace_ms: int = 10
    signing_key: bytes | None = None

    @classmethod
    def of(
        cls,
        kafka: KafkaConfig,
        topics: Topics,
        partitions: int,
        join: JoinConfig,
        learning: LearningConfig,
        state: StateConfig,
        signing_key: bytes | None = None,
    ) -> EngineConfig:
        """The configuration a worker with these settings gives its units (the worker
        and the broker-free harness alike)."""
        return cls(
            topics=topics,
            partitions=partitions,
            group=f"{topics.prefix}worker",
            source=f"eddy/{topics.prefix}worker",
            join_ttl_ms=int(join.ttl_s * 1000),
            join_max_pending=join.max_pending,
            max_future_ms=int(join.max_future_s * 1000),
            merge_wait_s=join.merge_wait_s,
            merge_grace_ms=join.merge_grace_ms,
            max_message_bytes=kafka.max_message_bytes,
            max_feature_magnitude=learning.max_feature_magnitude,
            dedup_horizon=state.dedup_horizon,
            feature_drift=FeatureDriftConfig() if learning.feature_drift else None,
            signing_key=signing_key,
        )


@dataclass
class EngineRuntime:
    """What the units of one process share at run time: the stream policy, the models
    that predict each stream, metrics, the embedding program's hooks, and two small
    process-wide memories."""

    policy: StreamPolicy
    directory: ModelDirectory
    metrics: EngineMetrics
    hooks: Hooks = field(default_factory=Hooks)
    # Called with (stream, features, label) for each example learned (champion scoring).
    on_learned: Callable[[str, Any, Any], None] | None = None
    # One feature-drift event per stream per cooldown, whichever partition saw it first
    # (each partition watches its own share of a stream's samples).
    feature_drift_last: dict[str, float] = field(default_factory=dict)
    # (stream, task) pairs whose unlearnable labels were explained once.
    warned: set[tuple[str, str]] = field(default_factory=set)
