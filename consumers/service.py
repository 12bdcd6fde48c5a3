"""Running a control-event consumer as a process: producer, signals, clean stop."""

from __future__ import annotations

import asyncio
import logging
import signal

import torch

from consumers.control import ControlConsumer
from streams.kafka import start_producer
from streams.settings import Settings

log = logging.getLogger(__name__)


async def run_consumer(
    settings: Settings,
    kind: type[ControlConsumer],
    on_start: asyncio.Future[ControlConsumer] | None = None,
    handle_signals: bool = False,
) -> None:
    """Run ``kind`` until stopped; SIGTERM finishes the current event first."""
    torch.set_num_threads(1)  # one core for training; the other serves the worker
    producer = await start_producer(settings, kind.name)
    try:
        consumer = kind(settings, producer)
        if handle_signals:
            loop = asyncio.get_running_loop()
            for sig in (signal.SIGTERM, signal.SIGINT):
                loop.add_signal_handler(sig, consumer.stop)
        if on_start is not None:
            on_start.set_result(consumer)
        log.info("%s: consuming %s", kind.name, consumer.topics.events)
        await consumer.run()
    finally:
        await producer.stop()
    log.info("%s: stopped cleanly", kind.name)
