"""examples/faust_agent.py against the embedded broker: eddy's learner in a faust agent
predicts every sample, learns from the inline labels, and stops cleanly on SIGTERM."""

from __future__ import annotations

import asyncio
import itertools
import os
import signal
import subprocess
import sys
import time
import uuid
from pathlib import Path

import orjson
import pytest
from aiokafka import AIOKafkaConsumer, AIOKafkaProducer, TopicPartition
from aiokafka.admin import AIOKafkaAdminClient, NewTopic

from eddy.streams.kafka.broker import EmbeddedBroker, die_with_parent
from eddy.streams.ops.sources import open_named

pytest.importorskip("faust", reason="faust-streaming is not installed (pip install 'eddy[faust]')")

pytestmark = pytest.mark.integration

EXAMPLE = Path(__file__).resolve().parents[2] / "examples" / "faust_agent.py"
N = 2000
WARM_UP = 300  # predictions before this many samples are not judged


async def create_topics(bootstrap: str, *names: str) -> None:
    admin = AIOKafkaAdminClient(bootstrap_servers=bootstrap)
    await admin.start()
    try:
        await admin.create_topics([NewTopic(name, 1, 1) for name in names])
    finally:
        await admin.close()


async def produce_sea(bootstrap: str, topic: str, n: int) -> dict[str, bool]:
    """Send ``n`` SEA samples with inline labels; return each id's label."""
    labels: dict[str, bool] = {}
    producer = AIOKafkaProducer(bootstrap_servers=bootstrap, linger_ms=5)
    await producer.start()
    try:
        for i, (x, y) in enumerate(itertools.islice(open_named("sea", seed=1), n)):
            event_id = f"s{i:05d}"
            labels[event_id] = y
            sample = {"id": event_id, "features": x, "label": y}
            await producer.send(topic, orjson.dumps(sample), key=event_id.encode())
        await producer.flush()
    finally:
        await producer.stop()
    return labels


async def read_predictions(
    bootstrap: str, topic: str, n: int, within: float, alive: subprocess.Popen[bytes]
) -> list[dict[str, object]]:
    """Predictions on ``topic`` in order, once ``n`` have come; fail after ``within`` s or
    if the agent's process ends first."""
    consumer = AIOKafkaConsumer(bootstrap_servers=bootstrap, enable_auto_commit=False)
    await consumer.start()
    tp = TopicPartition(topic, 0)
    consumer.assign([tp])
    await consumer.seek_to_beginning(tp)
    out: list[dict[str, object]] = []
    deadline = time.monotonic() + within
    try:
        while len(out) < n:
            if alive.poll() is not None:
                raise AssertionError(f"the faust example exited early ({alive.returncode})")
            if time.monotonic() > deadline:
                raise AssertionError(f"{len(out)} of {n} predictions after {within}s")
            batch = await consumer.getmany(tp, timeout_ms=200)
            out += [orjson.loads(r.value) for r in batch.get(tp, [])]
    finally:
        await consumer.stop()
    return out


def descendants(pid: int) -> set[int]:
    """Every live process below ``pid`` (Linux /proc)."""
    found: set[int] = set()
    stack = [pid]
    while stack:
        for task in Path(f"/proc/{stack.pop()}/task").glob("*"):
            try:
                children = (task / "children").read_text().split()
            except OSError:
                continue
            for child in map(int, children):
                if child not in found:
                    found.add(child)
                    stack.append(child)
    return found


def alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    return True


def test_faust_agent_predicts_and_learns(broker: EmbeddedBroker, tmp_path: Path) -> None:
    run = uuid.uuid4().hex[:10]
    samples, predictions = f"faust-{run}.samples", f"faust-{run}.predictions"
    asyncio.run(create_topics(broker.bootstrap, samples, predictions))
    log_path = tmp_path / "faust.log"
    with open(log_path, "wb") as log:
        proc = subprocess.Popen(
            [
                sys.executable,
                str(EXAMPLE),
                "--broker",
                broker.bootstrap,
                "--app-id",
                f"eddy-faust-{run}",
                "--samples",
                samples,
                "--predictions",
                predictions,
                "--loglevel",
                "warning",
            ],
            cwd=tmp_path,  # faust keeps an app data directory in its working directory
            stdout=log,
            stderr=subprocess.STDOUT,
            start_new_session=True,
            preexec_fn=die_with_parent,  # an interrupted test leaves no worker behind
        )
    try:
        labels = asyncio.run(produce_sea(broker.bootstrap, samples, N))
        got = asyncio.run(read_predictions(broker.bootstrap, predictions, N, 90.0, proc))
        children = descendants(proc.pid)
        proc.send_signal(signal.SIGTERM)
        rc = proc.wait(timeout=30)
    finally:
        if proc.poll() is None:
            os.killpg(proc.pid, signal.SIGKILL)
            proc.wait()
    output = log_path.read_text(errors="replace")

    by_id = {p["id"]: p for p in got}
    assert len(got) == N and by_id.keys() == labels.keys(), output[-3000:]
    assert all(p["model_version"] == "online-1" and p["stream"] == "default" for p in got)
    judged = [p for p in got if int(str(p["id"])[1:]) >= WARM_UP]
    accuracy = sum(p["prediction"] == labels[str(p["id"])] for p in judged) / len(judged)
    assert accuracy > 0.9, f"accuracy {accuracy:.3f} after the first {WARM_UP} samples"

    assert rc == 0, f"exit status {rc}:\n{output[-3000:]}"
    assert not [pid for pid in children if alive(pid)], "the worker left children behind"
    with pytest.raises(ProcessLookupError):  # nothing left in the worker's process group
        os.killpg(proc.pid, 0)
    assert "Traceback" not in output, output[-3000:]
