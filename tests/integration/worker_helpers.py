"""Helpers to run eddy's worker inside a test and wait on conditions with deadlines."""

from __future__ import annotations

import asyncio
import contextlib
import time
from collections.abc import AsyncIterator, Callable
from typing import Any

import orjson

from eddy.consumers.service import run_consumer
from eddy.streams.agents.worker import Worker
from eddy.streams.app import App
from eddy.streams.kafka.clients import start_producer
from eddy.streams.kafka.topics import Topics
from eddy.streams.settings import Settings
from eddy.streams.wire.codec import make_event


@contextlib.asynccontextmanager
async def running_worker(settings: Settings, app: App | None = None) -> AsyncIterator[Worker]:
    """Start a worker (of ``app``, or one learning any stream with the settings'
    defaults) in this event loop; stop it cleanly (checkpoint, leave) on exit."""
    app = app or App(settings=settings)
    started: asyncio.Future[Worker] = asyncio.get_running_loop().create_future()
    task = asyncio.create_task(app.run_async(create_topics=False, on_start=started))
    done, _ = await asyncio.wait({started, task}, return_when=asyncio.FIRST_COMPLETED)
    if task in done:
        task.result()  # raises the start-up error
    worker = started.result()
    try:
        yield worker
    finally:
        worker.stop()
        await asyncio.wait_for(task, 60)


async def wait_for(condition: Callable[[], bool], within: float, what: str) -> None:
    """Poll ``condition`` until true; fail naming ``what`` after ``within`` seconds."""
    deadline = time.monotonic() + within
    while not condition():
        if time.monotonic() > deadline:
            raise AssertionError(f"timed out after {within}s waiting for {what}")
        await asyncio.sleep(0.05)


def holds_within(condition: Callable[[], bool], within: float, interval: float = 0.2) -> bool:
    """Poll ``condition`` until true or ``within`` seconds pass; return whether it held."""
    deadline = time.monotonic() + within
    while time.monotonic() < deadline:
        if condition():
            return True
        time.sleep(interval)
    return condition()


@contextlib.asynccontextmanager
async def running_consumer(settings: Settings, kind: Any) -> AsyncIterator[Any]:
    """Start a control consumer (``Retrainer``, ``Exporter``) in this event loop; stop it
    on exit."""
    started: asyncio.Future[Any] = asyncio.get_running_loop().create_future()
    task = asyncio.create_task(run_consumer(settings, kind, on_start=started))
    consumer = await started
    try:
        yield consumer
    finally:
        consumer.stop()
        await asyncio.wait_for(task, 120)


async def request_manual_retrain(settings: Settings, start: int, end: int) -> None:
    """What ``eddy retrain`` sends: retrain stream ``default`` on examples[start:end]
    (partition 0)."""
    topics = Topics(settings.topics.prefix)
    window = {"offsets": [{"topic": topics.examples, "partition": 0, "start": start, "end": end}]}
    event = make_event(
        "retrain.requested",
        "eddy/test",
        {"stream": "default", "reason": "manual", "window": window},
        subject="default",
    )
    producer = await start_producer(settings.kafka)
    try:
        await producer.send_and_wait(topics.events, orjson.dumps(event))
    finally:
        await producer.stop()


def learned(worker: Worker, stream: str = "default") -> int:
    """Examples ``stream`` has learned in ``worker`` (0 if it does not own it yet)."""
    learner = worker.stream(stream)
    return learner.learned if learner is not None else 0
