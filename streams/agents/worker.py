"""The worker: the partition agent, its followers, and an HTTP endpoint with Prometheus
``/metrics`` and the live dashboard (:mod:`eddy.streams.observe.dashboard`).

:func:`run_worker` is what ``eddy worker`` and :meth:`eddy.App.run` run. On stop (or
SIGTERM/SIGINT with ``handle_signals``) the agent finishes its batch, checkpoints
and leaves its group; nothing is cancelled mid-batch, so a checkpoint never holds a
half-applied batch.
"""

from __future__ import annotations

import asyncio
import logging
import signal
import time
from dataclasses import dataclass, field
from typing import Any

import orjson
from aiokafka import AIOKafkaProducer
from prometheus_client import CollectorRegistry

from eddy.models.prequential import StreamLearner
from eddy.models.sealed import seal
from eddy.streams.agents.followers import ChampionScorer, EventsFollower, RegistryFollower
from eddy.streams.agents.partitions import WorkerAgent
from eddy.streams.agents.replicas import ReplicaFollower, SnapshotPublisher
from eddy.streams.engine.context import EngineConfig, EngineRuntime, Hooks, Out
from eddy.streams.engine.directory import ModelDirectory
from eddy.streams.engine.policy import Streams
from eddy.streams.kafka.admin import wait_for_topics
from eddy.streams.kafka.clients import close_client, start_producer, watch_connectivity
from eddy.streams.kafka.topics import Topics
from eddy.streams.observe.dashboard import History, MetricsServer
from eddy.streams.observe.metrics import (
    ConsumerMetrics,
    EngineMetrics,
    ModelEventMetrics,
    process_metrics,
)
from eddy.streams.settings import Settings
from eddy.streams.state.changelog import Changelog
from eddy.streams.state.registry_topic import KafkaRegistry
from eddy.streams.wire.codec import now_ms
from eddy.streams.wire.keys import signing_key, state_key

log = logging.getLogger(__name__)

# How long a stopping worker waits for its final checkpoints (milliseconds when Kafka
# answers) before it gives up on them; `eddy up` kills a child after 20 s.
STOP_GRACE_S = 10.0


@dataclass
class Worker:
    """A running worker; :meth:`stop` ends it cleanly."""

    agent: WorkerAgent
    directory: ModelDirectory
    registry: CollectorRegistry
    history: History
    events: EventsFollower
    champions: RegistryFollower
    kafka_registry: KafkaRegistry
    server: MetricsServer | None = None
    stopping: asyncio.Event = field(default_factory=asyncio.Event)

    def stop(self) -> None:
        """Finish the current batch, checkpoint, leave the group."""
        self.agent.stop()
        self.stopping.set()

    def stream(self, name: str) -> Any:
        """The learner of stream ``name``, if this worker owns it."""
        return self.directory.owners().get(name)

    def counts(self) -> dict[str, int]:
        """The partitions' counters summed (joined, dead letters by reason…)."""
        total: dict[str, int] = {}
        for part in self.agent.partitions.values():
            for k, v in part.unit.state.counts.items():
                total[k] = total.get(k, 0) + v
        return total


class Ticker:
    """What a worker does now and then between batches: metric snapshots, online
    snapshots for serving clients and replicas, champion scoring."""

    def __init__(
        self,
        settings: Settings,
        agent: WorkerAgent,
        metrics: EngineMetrics,
        scorer: ChampionScorer,
        registry: KafkaRegistry,
        publisher: SnapshotPublisher,
        producer: AIOKafkaProducer,
        key: bytes,
    ) -> None:
        self.settings = settings
        self.agent = agent
        self.metrics = metrics
        self.scorer = scorer
        self.registry = registry
        self.publisher = publisher
        self.producer = producer
        self.key = key
        self._last_metrics = time.monotonic()
        self._last_online: dict[str, tuple[float, int]] = {}
        self._info: dict[str, tuple[str, str, str]] = {}
        self._busy: asyncio.Task[None] | None = None

    def __call__(self) -> list[Out]:
        """Once per loop turn: start model snapshots when due; the metric records to
        ship when they are due."""
        records = []
        if time.monotonic() - self._last_metrics >= self.settings.observability.metrics_interval_s:
            self._last_metrics = time.monotonic()
            self.scorer.score()
            records = self.publish_metrics()
        if self._busy is None or self._busy.done():
            self._busy = asyncio.ensure_future(self._snapshots())
        return records

    def publish_metrics(self) -> list[Out]:
        """One metric snapshot per owned stream: the gauges, and the records for the
        metrics topic (returned)."""
        m = self.metrics
        topic = self.agent.config.topics.metrics
        records = []
        totals: dict[str, int] = {}
        for part in self.agent.partitions.values():
            state = part.unit.state
            for reason, n in state.counts.items():
                totals[reason] = totals.get(reason, 0) + n
            for name, monitor in state.monitors.items():
                for feature, tests in monitor.p_values.items():
                    for kind, p in tests.items():
                        m.feature_p_value.labels(name, feature, kind).set(p)
            for name, learner in state.learners.items():
                snapshot = learner.metrics.snapshot()
                m.examples.labels(name).set(learner.learned)
                for scope in ("cumulative", "rolling"):
                    for metric, value in snapshot[scope].items():
                        if value is not None:
                            m.metric.labels(name, metric, scope).set(value)
                event = {
                    "stream": name,
                    "model_version": learner.version,
                    "ts": now_ms(),
                    "examples": learner.learned,
                    "scored": snapshot["examples"],
                }
                event |= {k: snapshot[k] for k in ("cumulative", "rolling", "window")}
                if learner.immediate is not None:
                    immediate = learner.immediate.values()
                    event["immediate"] = immediate
                    for metric, value in immediate.items():
                        if value is not None:
                            m.metric.labels(name, metric, "immediate").set(value)
                champion = self.scorer.scores.get(name)
                if champion is not None and champion.count:
                    event["champion"] = champion.values("rolling")
                info = (name, learner.spec.model_name[:64], learner.version)
                previous = self._info.get(name)
                if previous is not None and previous != info:  # one series per stream
                    m.model_info.remove(*previous)
                self._info[name] = info
                m.model_info.labels(*info).set(1)
                records.append(Out(topic, orjson.dumps(event), name.encode(), 0))
        for reason, n in totals.items():
            if reason.endswith(("_expired", "_evicted", "_duplicate")):
                m.unjoined_state.labels(reason).set(n)
        return records

    async def _snapshots(self) -> None:
        """Online models to the registry (serving clients) and, when other worker
        processes share the group, to the snapshots topic (their replicas)."""
        owners = self.agent.runtime.directory.owners()
        every = self.settings.learning.snapshot_interval_s
        try:
            for stream, learner in owners.items():
                when, learned = self._last_online.get(stream, (0.0, -1))
                if (
                    learner.learned > 0
                    and learned != learner.learned
                    and (time.monotonic() - when >= every)
                ):
                    self._last_online[stream] = (time.monotonic(), learner.learned)
                    await self._publish_online(learner)
            if not self.agent.solo:
                for learner in self.publisher.due(owners):
                    await self.publisher.publish(self.producer, learner, self.agent.lock)
        except Exception as ex:  # noqa: BLE001 - serving copies must not stop learning
            log.warning("online snapshots: %r; trying again later", ex)

    async def _publish_online(self, learner: Any) -> None:
        async with self.agent.lock:  # never pickle a model half-way through a batch
            blob = await asyncio.to_thread(seal, learner.learner, self.key)
        card = {
            "task": learner.spec.task,
            "model_name": learner.spec.model_name,
            "online_version": learner.version,
            "learned": learner.learned,
            "taken_at_ms": now_ms(),
            "metrics": learner.metrics.values("rolling"),
        }
        await self.registry.publish_online(learner.stream, card, {"model.sealed": blob})


async def run_worker(
    settings: Settings,
    streams: Streams,
    hooks: Hooks | None = None,
    registry: CollectorRegistry | None = None,
    on_start: asyncio.Future[Worker] | None = None,
    handle_signals: bool = False,
) -> None:
    """Run a worker until stopped.

    ``on_start`` (if given) receives the :class:`Worker` once it runs, so that a
    caller in the same loop can watch or stop it.
    """
    registry = registry or CollectorRegistry()
    process_metrics(registry)
    topics = Topics(settings.topics.prefix)
    # Agents hand over whole, closed batches (streams/kafka/sender.py): allow large ones, and
    # send them at once (lingering cannot add records to a closed batch, only latency).
    producer = await start_producer(
        settings.kafka, "worker", linger_ms=0, max_batch_size=512 * 1024
    )
    server: MetricsServer | None = None
    try:
        metrics = EngineMetrics.create(registry)
        consumed = ConsumerMetrics.create(registry)
        consumed.kafka_up.set(1)
        events_metrics = ModelEventMetrics.create(registry)
        directory = ModelDirectory(lambda s: StreamLearner(s, streams.spec(s)))
        sign_key, pickle_key = signing_key(settings.state), state_key(settings.state)
        learning = settings.learning
        group = f"{topics.prefix}worker"
        scorer = ChampionScorer(metrics, learning.metrics_window)
        config = EngineConfig.of(
            settings.kafka,
            topics,
            settings.topics.partitions,
            settings.join,
            learning,
            settings.state,
            signing_key=sign_key,
        )
        runtime = EngineRuntime(
            streams, directory, metrics, hooks=hooks or Hooks(), on_learned=scorer.add
        )
        changelog = Changelog(
            settings.kafka,
            topics.changelog,
            pickle_key,
            settings.data_dir / "checkpoints" / group,
            group,
            producer,
        )
        kafka_registry = KafkaRegistry(
            settings.kafka, topics.prefix, settings.data_dir / "registry", sign_key, producer
        )
        publisher = SnapshotPublisher(
            settings.kafka, topics.snapshots, pickle_key, learning.max_staleness_ms
        )
        agent = WorkerAgent(
            settings.kafka, settings.state, config, runtime, producer, changelog, consumed
        )
        agent.on_tick = Ticker(
            settings, agent, metrics, scorer, kafka_registry, publisher, producer, pickle_key
        )
        events = EventsFollower(settings.kafka, topics.events, sign_key, events_metrics)
        champions = RegistryFollower(
            kafka_registry, settings.kafka, directory, scorer, events_metrics
        )
        history = History(registry, lambda: list(events.seen))
        worker = Worker(agent, directory, registry, history, events, champions, kafka_registry)
        obs = settings.observability
        if obs.metrics_port:
            server = worker.server = MetricsServer(
                obs.metrics_port, registry, history, host=obs.metrics_host
            ).start()
            log.info(
                "worker: dashboard on http://%s:%d/ (metrics at /metrics)",
                obs.metrics_host,
                server.port,
            )
        loop = asyncio.get_running_loop()
        if handle_signals:
            for sig in (signal.SIGTERM, signal.SIGINT):
                loop.add_signal_handler(sig, worker.stop)
        if on_start is not None:
            on_start.set_result(worker)
        log.info(
            "worker: topics %s*, streams %s",
            topics.prefix,
            ", ".join(streams.configured)
            or f"any (defaults: {streams.default.model_name}, {streams.default.task})",
        )
        if await wait_for_topics(producer, topics.all(), "worker", worker.stopping):
            follower = ReplicaFollower(settings.kafka, topics.snapshots, pickle_key, directory)
            await _run_tasks(worker, producer, settings, consumed, follower)
    finally:
        await close_client(producer)
        if server is not None:
            server.stop()
    log.info("worker: stopped cleanly")


async def _run_tasks(
    worker: Worker,
    producer: AIOKafkaProducer,
    settings: Settings,
    consumed: ConsumerMetrics,
    replicas: ReplicaFollower,
) -> None:
    """Run the agent and followers until one fails or the worker stops; re-raise a failure."""
    stop = worker.stopping
    tasks = [
        asyncio.create_task(worker.agent.run()),
        asyncio.create_task(worker.events.run(stop)),
        asyncio.create_task(worker.champions.run(stop)),
        asyncio.create_task(replicas.run(stop)),
        asyncio.create_task(worker.history.run(stop)),
        asyncio.create_task(
            watch_connectivity(
                producer,
                settings.kafka.bootstrap or "the embedded broker",
                stop,
                lambda up: consumed.kafka_up.set(1 if up else 0),
            )
        ),
    ]
    # A stop, or one task failing, stops them all; then a failure propagates.
    stop_asked = asyncio.create_task(stop.wait())
    await asyncio.wait([*tasks, stop_asked], return_when=asyncio.FIRST_COMPLETED)
    stop_asked.cancel()
    worker.stop()
    _, stuck = await asyncio.wait(tasks, timeout=STOP_GRACE_S)
    if stuck:
        # Waiting on a Kafka that does not answer (a send waits up to its request
        # timeout, 40 s): stop without the final checkpoint; the last one stands.
        log.warning(
            "worker: %d task(s) still waiting on Kafka %.0f s after stop; stopping them "
            "without a final checkpoint (they resume from the last one)",
            len(stuck),
            STOP_GRACE_S,
        )
        for task in stuck:
            task.cancel()
    await asyncio.gather(*tasks, return_exceptions=True)
    for task in tasks:
        if not task.cancelled() and task.exception() is not None:
            raise task.exception()  # type: ignore[misc]
