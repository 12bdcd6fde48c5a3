"""Running a control-event consumer as a process: producer, signals, metrics, clean stop."""

from __future__ import annotations

import asyncio
import logging
import signal

from prometheus_client import CollectorRegistry

from eddy.consumers.control import ControlConsumer
from eddy.streams.kafka.clients import close_client, start_producer
from eddy.streams.observe.dashboard import MetricsServer
from eddy.streams.observe.metrics import ControlMetrics, process_metrics
from eddy.streams.settings import Settings

log = logging.getLogger(__name__)


async def run_consumer(
    settings: Settings,
    kind: type[ControlConsumer],
    on_start: asyncio.Future[ControlConsumer] | None = None,
    handle_signals: bool = False,
) -> None:
    """Run ``kind`` until stopped; SIGTERM finishes the current event first."""
    registry = CollectorRegistry()
    process_metrics(registry)
    metrics = ControlMetrics.create(registry)
    producer = await start_producer(settings.kafka, kind.name)
    server: MetricsServer | None = None
    try:
        consumer = kind(settings, producer, metrics, registry)
        obs = settings.observability
        if obs.metrics_port:
            server = MetricsServer(obs.metrics_port, registry, host=obs.metrics_host).start()
            log.info("%s: metrics on :%d/metrics", kind.name, server.port)
        if handle_signals:
            loop = asyncio.get_running_loop()
            for sig in (signal.SIGTERM, signal.SIGINT):
                loop.add_signal_handler(sig, consumer.stop)
        if on_start is not None:
            on_start.set_result(consumer)
        log.info("%s: consuming %s", kind.name, consumer.topics.events)
        await consumer.run()
    finally:
        await close_client(producer)
        if server is not None:
            server.stop()
    log.info("%s: stopped cleanly", kind.name)
