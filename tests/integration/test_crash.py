"""kill -9 the worker mid-stream: after a restart every example changed the model once,
and the model is the one an uncrashed run gives."""

from __future__ import annotations

import asyncio
import itertools
import os
import signal
import subprocess
import sys
import time

import orjson
import pytest
from aiokafka import AIOKafkaProducer
from river import evaluate, linear_model, metrics, optim
from river import stream as river_stream
from river.datasets import synth

from eddy.models import checkpoint
from eddy.models.checkpoint import CheckpointError
from eddy.streams.kafka.admin import create_topics
from eddy.streams.kafka.topics import Topics
from eddy.streams.ops import sources
from eddy.streams.wire.keys import state_key
from tests.integration.event_helpers import LIVE_GRACE_MS, named, produce_librdkafka, qa_events

N = 25_000


def _start_worker(settings, log_path):
    command = [sys.executable, "-m", "eddy.streams.ops.cli", "worker"]
    command += ["--bootstrap", settings.kafka.bootstrap, "--topic-prefix", settings.topics.prefix]
    command += [
        "--partitions",
        "1",
        "--data-dir",
        str(settings.state.data_dir),
        "--model",
        "logreg",
        "--producer-idempotence",
        "off",
    ]
    command += ["--checkpoint-every", "3000", "--checkpoint-interval-s", "1"]
    command += ["--feature-drift", "false"]
    return subprocess.Popen(command, stdout=log_path.open("ab"), stderr=subprocess.STDOUT)


def _unit_state(settings):
    """The worker's last checkpoint of partition 0, from its local copy."""
    path = settings.data_dir / "checkpoints" / f"{settings.topics.prefix}worker" / "p0.ckpt"
    try:  # an eddy.streams.engine.checkpoint.Checkpoint
        return checkpoint.load(path, state_key(settings.state)).state
    except (FileNotFoundError, CheckpointError):
        return None


def _learned(settings) -> int:
    state = _unit_state(settings)
    return state.learners["default"].learned if state and "default" in state.learners else 0


async def _send_paced(settings, examples, rate):
    """Samples and labels (each right after its sample), stamped in that order."""
    topics = Topics(settings.topics.prefix)
    producer = AIOKafkaProducer(bootstrap_servers=settings.kafka.bootstrap, linger_ms=5)
    await producer.start()
    try:
        started, base = time.monotonic(), int(time.time() * 1000) - 10_000_000
        for i, (x, y) in enumerate(examples):
            delay = started + i / rate - time.monotonic()
            if delay > 0:
                await asyncio.sleep(delay)
            key = str(i).encode()
            await producer.send(
                topics.samples,
                orjson.dumps({"id": str(i), "features": x}),
                key=key,
                timestamp_ms=base + 2 * i,
            )
            await producer.send(
                topics.labels,
                orjson.dumps({"id": str(i), "label": y}),
                key=key,
                timestamp_ms=base + 2 * i + 1,
            )
        await producer.flush()
    finally:
        await producer.stop()


def _wait(condition, within, what, proc=None):
    deadline = time.monotonic() + within
    while not condition():
        if proc is not None and proc.poll() is not None:
            raise AssertionError(f"the worker exited ({proc.returncode}) while waiting for {what}")
        if time.monotonic() > deadline:
            raise AssertionError(f"timed out after {within}s waiting for {what}")
        time.sleep(0.1)


def _kill_9_mid_stream(settings, tmp_path, produce, n: int, kill_after: int) -> int:
    """Run a worker while ``produce()`` sends ``n`` examples, kill -9 it once
    ``kill_after`` are checkpointed, start another and let it finish; returns how many
    were checkpointed when it was killed."""
    log_path = tmp_path / "worker.log"
    worker = _start_worker(settings, log_path)
    loop = asyncio.new_event_loop()
    try:
        production = loop.run_in_executor(None, produce)
        _wait(lambda: _learned(settings) >= kill_after, 120, f"{kill_after} checkpointed", worker)
        killed_at = _learned(settings)
        assert killed_at < n, "the stream must still be flowing when the worker is killed"
        os.kill(worker.pid, signal.SIGKILL)
        worker.wait()

        worker = _start_worker(settings, log_path)
        loop.run_until_complete(production)
        _wait(lambda: _learned(settings) >= n, 180, f"{n} examples checkpointed", worker)
        worker.send_signal(signal.SIGTERM)
        assert worker.wait(timeout=60) == 0, log_path.read_text()[-3000:]
    finally:
        if worker.poll() is None:
            worker.kill()
            worker.wait()
        loop.close()
    return killed_at


def test_kill_9_mid_stream_then_restart_learns_each_example_exactly_once(settings, tmp_path):
    settings = settings.with_overrides(
        {"topic_prefix": settings.topics.prefix + "c.", "partitions": 1}
    )
    asyncio.run(create_topics(settings.kafka, settings.topics))

    def stream():
        return itertools.islice(sources.open_named("sea", seed=21), N)

    killed_at = _kill_9_mid_stream(
        settings, tmp_path, lambda: asyncio.run(_send_paced(settings, stream(), 5000)), N, 8_000
    )
    state = _unit_state(settings)
    learned = state.learners["default"]
    assert learned.learned == N
    assert learned.metrics.count == N
    river = evaluate.progressive_val_score(
        stream(), linear_model.LogisticRegression(), metrics.Accuracy()
    )
    assert learned.metrics.cumulative.get("accuracy").get() == pytest.approx(river.get(), abs=1e-9)
    print(
        f"killed after {killed_at} checkpointed examples; "
        f"{state.counts.get('duplicates', 0)} re-sent examples dropped; accuracy {river.get():.6f}"
    )


KILL_N, KILL_DELAY = 30_000, 37
_kill_dataset = named(lambda: itertools.islice(synth.SEA(variant=2, seed=5), KILL_N))


def test_kill_9_and_restore_mid_stream_give_the_model_of_an_uncrashed_run(settings, tmp_path):
    """Events with their own ts, labels 37 late on their own topic, from a librdkafka
    client: the model after a kill -9 and a restore is River's, weight for weight."""
    pytest.importorskip("confluent_kafka")
    settings = settings.with_overrides(
        {
            "topic_prefix": settings.topics.prefix + "k.",
            "partitions": 1,
            "merge_grace_ms": LIVE_GRACE_MS,
        }
    )
    asyncio.run(create_topics(settings.kafka, settings.topics))
    events = qa_events(_kill_dataset(), KILL_DELAY)
    killed_at = _kill_9_mid_stream(
        settings, tmp_path, lambda: produce_librdkafka(settings, events, 3000), KILL_N, 8000
    )
    learner = _unit_state(settings).learners["default"]
    river_model = linear_model.LogisticRegression(optimizer=optim.SGD(0.01))
    for _, x, y in river_stream.simulate_qa(_kill_dataset(), None, KILL_DELAY):
        if y is not None:
            river_model.learn_one(x, y)
    ours = learner.learner.estimator
    assert learner.learned == KILL_N
    assert dict(ours._weights) == dict(river_model._weights)  # bit for bit
    assert ours.intercept == river_model.intercept
    river = evaluate.progressive_val_score(
        _kill_dataset(),
        linear_model.LogisticRegression(optimizer=optim.SGD(0.01)),
        metrics.Accuracy(),
        delay=KILL_DELAY,
    )
    assert learner.metrics.cumulative.get("accuracy").get() == pytest.approx(river.get(), abs=1e-9)
    print(f"killed after {killed_at} checkpointed examples; accuracy {river.get():.6f}")
