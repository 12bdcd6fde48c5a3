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

import asyncio
import itertools
from collections.abc import Iterable, Sequence
from typing import Any

import orjson
from prometheus_client import CollectorRegistry

from eddy.models.prequential import StreamLearner
from eddy.streams.app import App
from eddy.streams.engine.checkpoint import Checkpoint
from eddy.streams.engine.context import EngineConfig, EngineRuntime, Out, Outputs
from eddy.streams.engine.directory import ModelDirectory
from eddy.streams.engine.merge import InputMerger
from eddy.streams.engine.unit import Unit
from eddy.streams.kafka.partitioning import partition_of
from eddy.streams.kafka.topics import Topics
from eddy.streams.observe.metrics import EngineMetrics
from eddy.streams.records import Record
from eddy.streams.state.store import MemoryStore
from eddy.streams.wire.codec import Label, Sample, encode_label, encode_sample

__all__ = ["Record", "TestRun", "replay"]


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
        self.config = EngineConfig.of(
            settings.kafka,
            self.topics,
            partitions,
            settings.join,
            settings.learning,
            settings.state,
        )
        self.runtime = EngineRuntime(policy, self.directory, self.metrics, hooks=app.hooks)
        self.store = MemoryStore()
        self._inputs = [self.topics.labels, self.topics.samples, self.topics.repartition]
        self.units = {p: self._unit(p, None) for p in range(partitions)}
        self._mergers = {p: InputMerger(self._inputs) for p in range(partitions)}
        self._clock = itertools.count(start_ms)
        # Every record sent, per (topic, partition), by offset: the run's "broker".
        self._log: dict[tuple[str, int], list[Record]] = {}
        self.produced: list[Out] = []

    def _unit(self, partition: int, checkpoint: Checkpoint | None) -> Unit:
        if checkpoint is None:
            return Unit(Unit.new_state(partition, self.config), self.config, self.runtime)
        state = checkpoint.state
        for learner in state.learners.values():
            learner.bind(self.runtime.policy.spec(learner.stream))
        return Unit(state, self.config, self.runtime)

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
        then its event time).
        """
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
        """Send raw bytes to one of the app's input topics (fuzzing, bad events).

        ``ts`` is the record's timestamp (default: the next tick of the logical clock).
        """
        if partition is None:
            partition = partition_of(key.decode(errors="replace"), self.partitions) if key else 0
        stamp = next(self._clock) if ts is None else ts
        log = self._log.setdefault((topic, partition), [])
        self._deliver(Record(topic, partition, len(log), stamp, key, value))

    def _deliver(self, record: Record) -> None:
        self._log.setdefault((record.topic, record.partition), []).append(record)
        self._fetch(record)

    def _fetch(self, record: Record) -> None:
        unit = self.units[record.partition]
        self._mergers[record.partition].add(record.topic, unit.timed(record.topic, [record]))

    # -- running -----------------------------------------------------------------------------

    def process(self) -> None:
        """Process everything sent, including what the units forward to each other."""
        while any(len(m) for m in self._mergers.values()):
            for p, merger in self._mergers.items():
                ready = merger.take(lambda topic, since: True)  # all sent is all there is
                if ready:
                    self._collect(self.units[p].process(ready))

    def flush_learners(self) -> None:
        """Learn what mini-batch learners still collect (at the end of a run)."""
        for unit in self.units.values():
            self._collect(unit.flush_learners())

    def checkpoint(self) -> None:
        """Checkpoint every partition, as a worker does.

        What was processed goes to :attr:`store`, with the offsets it reflects.
        """
        for p, unit in self.units.items():
            self._collect(unit.flush())
            saved = Checkpoint(unit.state, generation=1)
            asyncio.run(self.store.write(p, asyncio.run(self.store.snapshot(saved)), 1))

    def crash(self) -> None:
        """Crash every partition and restore it from its last checkpoint.

        Lose every partition's memory and restore it from its last :meth:`checkpoint`
        (or from nothing), then read each input again from the restored offsets, as a
        worker restarted after a kill -9 does. What was produced since stays produced
        (outputs are at-least-once).
        """
        for p, unit in self.units.items():
            unit.release()
            restored = asyncio.run(self.store.assign(p))
            self.units[p] = self._unit(p, None if restored is None else restored.checkpoint)
            self._mergers[p] = InputMerger(self._inputs)
        for (topic, p), records in self._log.items():
            start = self.units[p].state.offsets.get(topic, 0)
            for record in records[start:]:
                self._fetch(record)

    def expire(self, label_clock_ms: int | None = None, sample_clock_ms: int | None = None) -> None:
        """Let the join expire what waited longer than the TTL.

        By the given clocks (default: the logical clock now).
        """
        now = next(self._clock)
        clocks = {
            "labels": now if label_clock_ms is None else label_clock_ms,
            "samples": now if sample_clock_ms is None else sample_clock_ms,
        }
        for unit in self.units.values():
            self._collect(unit.on_idle(clocks))
        self.process()

    def _collect(self, outputs: Outputs) -> None:
        for record in outputs.records():
            if record.topic == self.topics.repartition:
                stamp = (
                    record.timestamp_ms if record.timestamp_ms is not None else next(self._clock)
                )
                offset = len(self._log.get((record.topic, record.partition), ()))
                self._deliver(
                    Record(
                        record.topic,
                        record.partition,
                        offset,
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
    """Send a dataset as River's ``stream.simulate_qa`` orders it, and process it.

    Send ``dataset`` as River's ``stream.simulate_qa(dataset, moment=None,
    delay=delay)`` orders it: each sample, and each label ``delay`` samples later (at
    once when ``inline``); process it all; return the run.
    """
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
