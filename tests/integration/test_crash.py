"""kill -9 the worker mid-stream: after a restart every example changed the model once."""

from __future__ import annotations

import asyncio
import itertools
import os
import signal
import subprocess
import sys
import time

import pytest
from river import evaluate, linear_model, metrics

from eddy.models import checkpoint
from eddy.models.checkpoint import CheckpointError
from eddy.streams import sources
from eddy.streams.producer import ProduceOptions, produce
from eddy.streams.topics import create_topics

N = 50_000


def _start_worker(settings, log_path):
    command = [sys.executable, "-m", "eddy.streams.cli", "worker"]
    command += ["--bootstrap", settings.kafka.bootstrap, "--topic-prefix", settings.topics.prefix]
    command += [
        "--partitions",
        "1",
        "--data-dir",
        str(settings.state.data_dir),
        "--model",
        "logreg",
    ]
    command += ["--checkpoint-every", "3000", "--checkpoint-interval-s", "1"]
    return subprocess.Popen(command, stdout=log_path.open("ab"), stderr=subprocess.STDOUT)


def _learner_state(settings):
    path = settings.state.data_dir / "checkpoints" / f"{settings.topics.prefix}learner" / "p0.ckpt"
    try:
        return checkpoint.load(path).state  # a streams.agents.base.Checkpointed
    except (FileNotFoundError, CheckpointError):
        return None


def _learned(settings) -> int:
    state = _learner_state(settings)
    return state.streams["default"].learned if state and "default" in state.streams else 0


def _wait(condition, within, what, proc=None):
    deadline = time.monotonic() + within
    while not condition():
        if proc is not None and proc.poll() is not None:
            raise AssertionError(f"the worker exited ({proc.returncode}) while waiting for {what}")
        if time.monotonic() > deadline:
            raise AssertionError(f"timed out after {within}s waiting for {what}")
        time.sleep(0.1)


def test_kill_9_mid_stream_then_restart_learns_each_example_exactly_once(settings, tmp_path):
    settings = settings.with_overrides(
        {"topic_prefix": settings.topics.prefix + "c.", "partitions": 1}
    )
    asyncio.run(create_topics(settings.kafka, settings.topics))
    log_path = tmp_path / "worker.log"

    def stream():
        return itertools.islice(sources.open_named("sea", seed=21), N)

    async def produce_slowly():
        await produce(
            settings.kafka,
            settings.topics.prefix,
            stream(),
            ProduceOptions(n=N, rate=5000, seed=21),
        )

    worker = _start_worker(settings, log_path)
    loop = asyncio.new_event_loop()
    try:
        production = loop.run_in_executor(None, lambda: asyncio.run(produce_slowly()))
        _wait(lambda: _learned(settings) >= 15_000, 120, "15,000 examples checkpointed", worker)
        killed_at = _learned(settings)
        assert killed_at < N, "the stream must still be flowing when the worker is killed"
        os.kill(worker.pid, signal.SIGKILL)
        worker.wait()

        worker = _start_worker(settings, log_path)
        loop.run_until_complete(production)
        _wait(lambda: _learned(settings) >= N, 180, f"{N} examples checkpointed", worker)
        worker.send_signal(signal.SIGTERM)
        assert worker.wait(timeout=60) == 0, log_path.read_text()[-3000:]
    finally:
        if worker.poll() is None:
            worker.kill()
            worker.wait()
        loop.close()

    state = _learner_state(settings)
    learned = state.streams["default"]
    assert learned.learned == N
    assert learned.metrics.count == N
    river = evaluate.progressive_val_score(
        stream(), linear_model.LogisticRegression(), metrics.Accuracy()
    )
    assert learned.metrics.cumulative.get("accuracy").get() == pytest.approx(river.get(), abs=1e-9)
    print(
        f"killed after {killed_at} checkpointed examples; "
        f"{state.duplicates} re-sent examples dropped; accuracy {river.get():.6f}"
    )
