"""Helpers to run eddy's worker inside a test and wait on conditions with deadlines."""

from __future__ import annotations

import asyncio
import contextlib
import time
from collections.abc import AsyncIterator, Callable

from eddy.streams.app import App
from eddy.streams.settings import Settings
from eddy.streams.worker import Worker


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


def learned(worker: Worker, stream: str = "default") -> int:
    """Examples ``stream`` has learned in ``worker`` (0 if it does not own it yet)."""
    learner = worker.stream(stream)
    return learner.learned if learner is not None else 0
