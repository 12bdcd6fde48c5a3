"""The worker process: the join and learner agents, a producer, and an HTTP endpoint
with Prometheus ``/metrics`` and the live dashboard (:mod:`eddy.streams.dashboard`).

SIGTERM or SIGINT asks both agents to finish their batch, checkpoint and leave
their groups; nothing is cancelled mid-batch, so a checkpoint never holds a
half-applied batch.
"""

from __future__ import annotations

import asyncio
import gc
import logging
import signal
from dataclasses import dataclass, field

from aiokafka import AIOKafkaProducer
from prometheus_client import CollectorRegistry

from eddy.models.learners import make_learner
from eddy.models.prequential import LearnerConfig
from eddy.streams.agents.champions import ChampionFollower
from eddy.streams.agents.join import JoinAgent
from eddy.streams.agents.learner import LearnerAgent
from eddy.streams.dashboard import History, MetricsServer
from eddy.streams.deadletter import DeadLetterQueue
from eddy.streams.kafka import close_client, start_producer, watch_connectivity
from eddy.streams.metrics import (
    ConsumerMetrics,
    EdgeMetrics,
    JoinMetrics,
    LearnerMetrics,
    ModelEventMetrics,
    process_metrics,
)
from eddy.streams.settings import Settings
from eddy.streams.topics import Topics, wait_for_topics

log = logging.getLogger(__name__)

# How long a stopping worker waits for its agents' final checkpoints (milliseconds
# when Kafka answers) before it gives up on them; `eddy up` kills a child after 20 s.
STOP_GRACE_S = 10.0


def learner_config(settings: Settings) -> LearnerConfig:
    """The learning configuration the settings describe."""
    return LearnerConfig(
        model=settings.model,
        task=settings.task,
        detector=settings.detector,
        drift_min_examples=settings.drift_min_examples,
        drift_cooldown=settings.drift_cooldown,
        metrics_window=settings.metrics_window,
    )


@dataclass
class Worker:
    """A running worker; :meth:`stop` ends it cleanly."""

    join: JoinAgent
    learner: LearnerAgent
    champions: ChampionFollower
    registry: CollectorRegistry
    history: History
    server: MetricsServer | None = None
    stopping: asyncio.Event = field(default_factory=asyncio.Event)

    def stop(self) -> None:
        """Finish the current batches, checkpoint, leave the groups."""
        self.join.stop()
        self.learner.stop()
        self.champions.stop()
        self.stopping.set()


async def run_worker(
    settings: Settings,
    registry: CollectorRegistry | None = None,
    on_start: asyncio.Future[Worker] | None = None,
    handle_signals: bool = False,
) -> None:
    """Run the join and learner agents until stopped.

    ``on_start`` (if given) receives the :class:`Worker` once it runs, so that a
    caller in the same loop can watch or stop it.
    """
    registry = registry or CollectorRegistry()
    process_metrics(registry)
    topics = Topics(settings.topic_prefix)
    config = learner_config(settings)
    # Fails fast on a bad model/task pair, and imports the model's libraries (torch
    # takes ~2 s) now rather than mid-stream inside the event loop.
    make_learner(config.model, config.task)
    # Agents hand over whole, closed batches (streams/sender.py): allow large ones, and
    # send them at once (lingering cannot add records to a closed batch, only latency).
    producer = await start_producer(settings, "worker", linger_ms=0, max_batch_size=512 * 1024)
    server: MetricsServer | None = None
    try:
        edge = EdgeMetrics.create(registry)
        consumed = ConsumerMetrics.create(registry)
        consumed.kafka_up.set(1)
        # Headroom under the producer's request cap for a truncated value's headers.
        cap = settings.max_message_bytes - 16 * 1024
        join_dlq = DeadLetterQueue(producer, topics.deadletter, edge, topics.kind, "join", cap)
        learn_dlq = DeadLetterQueue(producer, topics.deadletter, edge, topics.kind, "learner", cap)
        learner = LearnerAgent(
            settings, producer, learn_dlq, LearnerMetrics.create(registry), config,
            consumer_metrics=consumed,
        )  # fmt: skip
        join = JoinAgent(settings, producer, join_dlq, JoinMetrics.create(registry), consumed)
        champions = ChampionFollower(settings, learner, ModelEventMetrics.create(registry))
        history = History(registry, lambda: list(champions.seen))
        worker = Worker(join, learner, champions, registry, history)
        if settings.metrics_port:
            server = worker.server = MetricsServer(settings.metrics_port, registry, history).start()
            log.info("worker: dashboard on http://127.0.0.1:%d/ (metrics at /metrics)", server.port)
        loop = asyncio.get_running_loop()
        if handle_signals:
            for sig in (signal.SIGTERM, signal.SIGINT):
                loop.add_signal_handler(sig, worker.stop)
        if on_start is not None:
            on_start.set_result(worker)
        log.info(
            "worker: topics %s*, model %s (%s), drift detector %s",
            settings.topic_prefix, config.model, config.task, config.detector,
        )  # fmt: skip
        if await wait_for_topics(producer, topics.all(), "worker", worker.stopping):
            await _run_agents(worker, producer, settings, consumed)
    finally:
        await close_client(producer)
        if server is not None:
            server.stop()
    log.info("worker: stopped cleanly")


async def _run_agents(
    worker: Worker, producer: AIOKafkaProducer, settings: Settings, consumed: ConsumerMetrics
) -> None:
    """Run every agent until one fails or the worker stops; re-raise a failure."""
    agents = (
        worker.join.run(),
        worker.learner.run(),
        worker.champions.run(),
        worker.history.run(worker.stopping),
        watch_connectivity(
            producer, settings.bootstrap or "the embedded broker", worker.stopping,
            lambda up: consumed.kafka_up.set(1 if up else 0),
        ),
    )  # fmt: skip
    # torch and River leave ~240,000 objects that every full collection would
    # walk: a ~150 ms pause in the middle of the stream, the worst of its p99
    # latency (bench/README.md). They live as long as the process: freeze them.
    gc.collect()
    gc.freeze()
    tasks = [asyncio.create_task(agent) for agent in agents]
    # A stop, or one agent failing, stops them all; then a failure propagates.
    stop_asked = asyncio.create_task(worker.stopping.wait())
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
            len(stuck), STOP_GRACE_S,
        )  # fmt: skip
        for task in stuck:
            task.cancel()
    await asyncio.gather(*tasks, return_exceptions=True)
    for task in tasks:
        if not task.cancelled() and task.exception() is not None:
            raise task.exception()  # type: ignore[misc]
