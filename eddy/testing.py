"""Run an app's streams without a broker: eddy's own code path over in-memory events.

:class:`TestRun` feeds samples, labels or raw bytes to the same
:class:`~eddy.streams.engine.unit.Unit` objects a worker runs, merged by event time as a
worker merges its topics (an event's ``ts``; without one, its record's timestamp: the
next tick of a logical clock, so events sent without times keep the order they were
sent in), forwards what a worker would forward through the repartition topic, and
keeps every record a worker would produce. :func:`replay` sends a dataset as River's
``stream.simulate_qa`` orders questions and answers, with labels ``delay`` samples late.

>>> from river import linear_model
>>> import eddy
>>> from eddy.testing import TestRun
>>> app = eddy.App()
>>> _ = app.stream("default", model=linear_model.LogisticRegression())
>>> run = TestRun(app)
>>> run.sample("a", {"x": 1.0}); run.label("a", True); run.sample("b", {"x": 1.0})
>>> run.process()
>>> [(p["id"], p["prediction"]) for p in run.predictions]  # a: by the untrained model
[('a', False), ('b', True)]
>>> run.learner("default").learned
1
"""

from __future__ import annotations

import itertools
from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from typing import Any

import orjson
from prometheus_client import CollectorRegistry

from eddy.models.prequential import StreamLearner
from eddy.streams.agents.replicas import ModelDirectory
from eddy.streams.app import App
from eddy.streams.engine.merge import InputMerger
from eddy.streams.engine.unit import EngineContext, Out, Unit
from eddy.streams.kafka.partitioning import partition_of
from eddy.streams.kafka.topics import Topics
from eddy.streams.observe.metrics import EngineMetrics
from eddy.streams.wire.codec import Label, Sample, encode_label, encode_sample

__all__ = ["Record", "TestRun", "replay"]


@dataclass(frozen=True)
class Record:
    """An in-memory Kafka record (what the engine consumes and produces)."""

    topic: str
    partition: int
    offset: int
    timestamp: int
    key: bytes | None
    value: bytes | None
    headers: tuple[tuple[str, bytes], ...] = ()


class TestRun:
    """A broker-free run of ``app`` over ``partitions`` partitions (see the module)."""

    __test__ = False  # not a pytest test class

    def __init__(self, app: App, partitions: int = 1, start_ms: int = 1_700_000_000_000) -> None:
        assert app.settings is not None
        settings = app.settings
        self.app = app
        self.partitions = partitions
        self.topics = Topics(settings.topics.prefix)
        self.registry = CollectorRegistry()
        self.metrics = EngineMetrics.create(self.registry)
        policy = app.policy()
        self.directory = ModelDirectory(lambda s: StreamLearner(s, policy.spec(s)))
        # The harness's own partition count: a run may split what the settings do not.
        self.ctx = EngineContext.from_settings(
            settings.with_overrides({"partitions": partitions}),
            policy,
            self.directory,
            self.metrics,
            hooks=app.hooks,
        )
        self.units = {p: Unit(Unit.new_state(p, self.ctx), self.ctx) for p in range(partitions)}
        inputs = [self.topics.labels, self.topics.samples, self.topics.repartition]
        self._mergers = {p: InputMerger(inputs) for p in range(partitions)}
        self._clock = itertools.count(start_ms)
        self._offsets: dict[tuple[str, int], int] = {}
        self.produced: list[Out] = []

    # -- sending -----------------------------------------------------------------------------

    def sample(
        self,
        id: str,
        features: dict[str, Any] | list[Any],
        stream: str = "default",
        label: Any = None,
        ts: int | None = None,
        partition: int | None = None,
    ) -> None:
        """Send a sample (keyed by its id; ``partition`` overrides the partitioner).

        ``ts`` is the event time, written into the event; without it the sample has no
        ``ts`` and its record gets the next tick of the run's logical clock (which is
        then its event time)."""
        value = encode_sample(Sample(id, features, ts, label, stream))
        self.send(self.topics.samples, value, id.encode(), partition, ts)

    def label(
        self, id: str, label: Any, ts: int | None = None, partition: int | None = None
    ) -> None:
        """Send a label for the sample with the same id (``ts`` as for :meth:`sample`)."""
        value = encode_label(Label(id, label, ts))
        self.send(self.topics.labels, value, id.encode(), partition, ts)

    def send(
        self,
        topic: str,
        value: bytes | None,
        key: bytes | None = None,
        partition: int | None = None,
        ts: int | None = None,
    ) -> None:
        """Send raw bytes to one of the app's input topics (fuzzing, bad events);
        ``ts`` is the record's timestamp (default: the next tick of the logical clock)."""
        if partition is None:
            partition = partition_of(key.decode(errors="replace"), self.partitions) if key else 0
        stamp = next(self._clock) if ts is None else ts
        offset = self._next_offset(topic, partition)
        self._deliver(Record(topic, partition, offset, stamp, key, value))

    def _next_offset(self, topic: str, partition: int) -> int:
        offset = self._offsets.get((topic, partition), 0)
        self._offsets[(topic, partition)] = offset + 1
        return offset

    def _deliver(self, record: Record) -> None:
        unit = self.units[record.partition]
        self._mergers[record.partition].add(record.topic, unit.timed(record.topic, [record]))

    # -- running -----------------------------------------------------------------------------

    def process(self) -> None:
        """Process everything sent, including what the units forward to each other."""
        while any(len(m) for m in self._mergers.values()):
            for p, merger in self._mergers.items():
                ready = merger.take(lambda topic, since: True)  # all sent is all there is
                if ready:
                    self.units[p].process(ready)
            self._collect()

    def flush_learners(self) -> None:
        """Learn what mini-batch learners still collect (at the end of a run)."""
        for unit in self.units.values():
            unit.flush_learners()
        self._collect()

    def expire(self, label_clock_ms: int | None = None, sample_clock_ms: int | None = None) -> None:
        """Let the join expire what waited longer than the TTL by the given clocks
        (default: the logical clock now)."""
        now = next(self._clock)
        for unit in self.units.values():
            unit.on_idle(
                {
                    "labels": now if label_clock_ms is None else label_clock_ms,
                    "samples": now if sample_clock_ms is None else sample_clock_ms,
                }
            )
        self._collect()
        self.process()

    def _collect(self) -> None:
        out, self.ctx.out = self.ctx.out, []
        for record in out:
            if record.topic == self.topics.repartition:
                stamp = (
                    record.timestamp_ms if record.timestamp_ms is not None else next(self._clock)
                )
                self._deliver(
                    Record(
                        record.topic,
                        record.partition,
                        self._next_offset(record.topic, record.partition),
                        stamp,
                        record.key,
                        record.value,
                        tuple(record.headers),
                    )
                )
            self.produced.append(record)

    # -- results -----------------------------------------------------------------------------

    def learner(self, stream: str = "default") -> StreamLearner:
        """The learner of ``stream`` (KeyError if it learned nothing yet)."""
        for unit in self.units.values():
            if stream in unit.state.learners:
                return unit.state.learners[stream]
        raise KeyError(stream)

    def on(self, topic: str) -> list[Out]:
        """What was produced to ``topic`` (a full name, or a short one: ``predictions``)."""
        full = topic if topic.startswith(self.topics.prefix) else self.topics.prefix + topic
        return [r for r in self.produced if r.topic == full]

    def decoded(self, topic: str) -> list[dict[str, Any]]:
        """The JSON values produced to ``topic``."""
        return [orjson.loads(r.value) for r in self.on(topic) if r.value is not None]

    @property
    def predictions(self) -> list[dict[str, Any]]:
        """Prediction events, in the order they were published."""
        return self.decoded("predictions")

    @property
    def events(self) -> list[dict[str, Any]]:
        """Control events (drift, feature drift, retrain requests)."""
        return self.decoded("events")

    @property
    def dead_letters(self) -> list[tuple[str, Out]]:
        """``(reason, record)`` of every dead-lettered record."""
        out = []
        for record in self.on("deadletter"):
            reason = dict(record.headers).get("eddy-dlt-reason", b"").decode()
            out.append((reason, record))
        return out

    def counts(self) -> dict[str, int]:
        """The units' counters summed."""
        total: dict[str, int] = {}
        for unit in self.units.values():
            for k, v in unit.state.counts.items():
                total[k] = total.get(k, 0) + v
        return total


def replay(
    app: App,
    dataset: Iterable[tuple[dict[str, Any], Any]],
    delay: int = 0,
    stream: str = "default",
    partitions: int = 1,
    inline: bool = False,
) -> TestRun:
    """Send ``dataset`` as River's ``stream.simulate_qa(dataset, moment=None,
    delay=delay)`` orders it: each sample, and each label ``delay`` samples later (at
    once when ``inline``); process it all; return the run."""
    from river import stream as river_stream

    run = TestRun(app, partitions)
    if inline:
        for i, (x, y) in enumerate(dataset):
            run.sample(str(i), _clean(x), stream, label=y)
    else:
        for i, x, y in river_stream.simulate_qa(dataset, moment=None, delay=delay):
            if y is None:
                run.sample(str(i), _clean(x), stream)
            else:
                run.label(str(i), y)
    run.process()
    return run


def _clean(x: dict[Any, Any]) -> dict[str, Any]:
    return {str(k): v for k, v in x.items()}


def sequence(records: Sequence[Out]) -> list[bytes | None]:
    """The values of ``records`` (a small convenience for tests)."""
    return [r.value for r in records]
