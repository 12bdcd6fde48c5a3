"""Broker loss: the embedded broker dies under a running system and comes back empty.

`eddy up` restarts it on the same address and recreates the topics; the worker,
retrainer and exporter are not restarted: they report the outage, reconnect by
themselves, notice that their checkpoints point into topics that are gone, and
learn the new data while keeping what they had learned.
"""

from __future__ import annotations

import asyncio
import contextlib
import itertools
import json
import os
import signal
import subprocess
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import pytest
from aiokafka.errors import KafkaConnectionError

from eddy.streams.kafka.admin import create_topics
from eddy.streams.kafka.broker import EmbeddedBroker, free_port
from eddy.streams.observe.dashboard import sum_samples
from eddy.streams.ops import sources
from eddy.streams.ops.producer import ProduceOptions
from eddy.streams.ops.producer import produce as send_events
from eddy.streams.ops.supervisor import eddy_argv, scrape
from tests.integration.test_up import REPO, alive, eddy_env, wait_until
from tests.integration.worker_helpers import learned, running_worker, wait_for


def stream_examples(port: int) -> float:
    """Examples learned (from the worker's restored state); -1 while it does not answer."""
    samples = scrape(port, timeout_s=2)
    return -1.0 if samples is None else sum_samples(samples, "eddy_stream_examples")


def produce(bootstrap: str, prefix: str, n: int) -> None:
    cmd = eddy_argv(
        "produce",
        "--dataset",
        "sea",
        "--n",
        str(n),
        "--id-prefix",
        prefix,
        "--no-progress",
        "--bootstrap",
        bootstrap,
        "--producer-idempotence",
        "off",
    )
    subprocess.run(cmd, cwd=REPO, env=eddy_env(), check=True, capture_output=True, timeout=120)


def test_workers_ride_out_a_broker_restart_that_loses_every_topic(tmp_path: Path) -> None:
    data = tmp_path / "eddy-data"
    out = tmp_path / "up.out"
    cmd = eddy_argv("up", "--partitions", "1", "--data-dir", str(data), "--join-ttl-s", "2")
    with open(out, "wb") as sink:
        up = subprocess.Popen(cmd, cwd=REPO, env=eddy_env(), stdout=sink, stderr=sink)
    try:
        status = wait_until(
            lambda: (data / "up.json").exists() and json.loads((data / "up.json").read_text()),
            60,
            "up.json",
        )
        port = status["children"]["worker"]["metrics_port"]
        pids = {name: c["pid"] for name, c in status["children"].items()}
        wait_until(lambda: stream_examples(port) >= 0, 60, "the worker's metrics")
        produce(status["bootstrap"], "before", 2000)
        wait_until(lambda: stream_examples(port) >= 2000, 90, "2,000 examples learned")

        os.kill(status["broker_pid"], signal.SIGKILL)  # its data dies with it

        def broker_back() -> dict | None:
            s = json.loads((data / "up.json").read_text())
            return s if s["broker_pid"] not in (None, status["broker_pid"]) else None

        after = wait_until(broker_back, 60, "eddy up restarting the broker")
        assert alive(after["broker_pid"])
        produce(status["bootstrap"], "after", 2000)
        # The model keeps its 2,000 and learns the 2,000 new ones, with no restart.
        wait_until(lambda: stream_examples(port) >= 4000, 180, "4,000 examples learned")
        assert stream_examples(port) == 4000
        final = json.loads((data / "up.json").read_text())
        assert {n: c["pid"] for n, c in final["children"].items()} == pids
        assert all(c["restarts"] == 0 for c in final["children"].values())
        output = out.read_text()
        assert "the embedded broker" in output and "exited" in output
        worker_log = (data / "logs" / "worker.log").read_text()
        assert "is not the partition the checkpoint was taken on" in worker_log
    finally:
        up.send_signal(signal.SIGTERM)
        assert up.wait(90) == 0


@dataclass
class StandaloneWorker:
    """An `eddy worker` process on an embedded broker of its own, topics created."""

    broker: EmbeddedBroker
    env: dict[str, str]
    metrics: int
    log: Path
    process: subprocess.Popen | None = None

    @property
    def bootstrap(self) -> str:
        return self.broker.bootstrap

    def create_topics(self) -> None:
        done = subprocess.run(
            eddy_argv("topics", "create"),
            cwd=REPO,
            env=self.env,
            capture_output=True,
            text=True,
            timeout=60,
        )
        assert done.returncode == 0, f"eddy topics create failed:\n{done.stderr[-3000:]}"

    def lose_the_broker(self) -> None:
        self.broker.stop()
        wait_until(lambda: "does not answer" in self.log.read_text(), 30, "the outage reported")


@contextlib.contextmanager
def standalone_worker(tmp_path: Path) -> Iterator[StandaloneWorker]:
    port, metrics = free_port("127.0.0.1"), free_port("127.0.0.1")
    env = eddy_env() | {
        "EDDY_BOOTSTRAP": f"127.0.0.1:{port}",
        "EDDY_DATA_DIR": str(tmp_path / "data"),
        "EDDY_PARTITIONS": "1",
        "EDDY_PRODUCER_IDEMPOTENCE": "off",
        "EDDY_METRICS_PORT": str(metrics),
        "EDDY_JOIN_TTL_S": "2",
    }
    w = StandaloneWorker(EmbeddedBroker(port=port).start(), env, metrics, tmp_path / "worker.log")
    try:
        w.create_topics()
        with open(w.log, "wb") as sink:
            w.process = subprocess.Popen(
                eddy_argv("worker"), cwd=REPO, env=env, stdout=sink, stderr=sink
            )
        yield w
    finally:
        if w.process is not None and w.process.poll() is None:
            w.process.send_signal(signal.SIGTERM)
            try:
                w.process.wait(60)
            except subprocess.TimeoutExpired:
                w.process.kill()
                w.process.wait()
        w.broker.stop()


def test_a_standalone_worker_reports_the_outage_and_resumes_on_the_new_broker(
    tmp_path: Path,
) -> None:
    """`eddy worker` against a broker that is gone for a while, then back empty."""
    with standalone_worker(tmp_path) as w:
        produce(w.bootstrap, "before", 2000)
        wait_until(lambda: stream_examples(w.metrics) >= 2000, 90, "2,000 examples learned")
        w.lose_the_broker()
        w.broker.start()
        w.create_topics()
        produce(w.bootstrap, "after", 2000)
        wait_until(lambda: stream_examples(w.metrics) >= 4000, 180, "4,000 examples learned")
        assert stream_examples(w.metrics) == 4000 and w.process.poll() is None
        assert "Kafka is reachable again after" in w.log.read_text()


@pytest.mark.parametrize("broker", ["gone", "back without topics"])
def test_sigterm_stops_a_worker_whose_broker_is_lost(tmp_path: Path, broker: str) -> None:
    """Stopping must not wait on Kafka: a rebalance that cannot finish (the topics are
    gone), a commit or LeaveGroup without a coordinator, a send nobody acknowledges.
    Each of these once kept the worker running after SIGTERM, for good."""
    with standalone_worker(tmp_path) as w:
        produce(w.bootstrap, "before", 500)
        wait_until(lambda: stream_examples(w.metrics) >= 500, 90, "500 examples learned")
        w.lose_the_broker()
        if broker == "back without topics":
            w.broker.start()
            wait_until(lambda: "reachable again" in w.log.read_text(), 30, "Kafka back")
        w.process.send_signal(signal.SIGTERM)
        # `eddy up` kills a child 20 s after SIGTERM; the worker gives up on Kafka after 10.
        assert w.process.wait(40) == 0
        assert "worker: stopped cleanly" in w.log.read_text()


def test_a_kafka_error_in_a_rebalance_restarts_the_consumer_and_other_errors_stop_it(settings):
    """A rebalance callback's error reaches the agent through ``fail`` (aiokafka only logs
    it). A Kafka error there (the broker lost mid hand-over, as in the test above) is an
    outage: the agent restarts from its checkpoint and learns on. Anything else (a
    refused restore) stops the worker with that error."""
    settings = settings.with_overrides(
        {"topic_prefix": settings.topics.prefix + "rb.", "partitions": 1}
    )
    asyncio.run(create_topics(settings.kafka, settings.topics))

    async def outage() -> None:
        async with running_worker(settings) as worker:
            await wait_for(lambda: worker.agent.ready.is_set(), 60, "partitions assigned")
            worker.agent.fail(KafkaConnectionError("connection lost during a hand-over"))
            await wait_for(lambda: worker.agent.outages == 1, 30, "an outage restart")
            data = itertools.islice(sources.open_named("sea", seed=4), 500)
            options = ProduceOptions(n=500, inline_labels=True)
            await send_events(settings.kafka, settings.topics.prefix, data, options)
            await wait_for(lambda: learned(worker) == 500, 60, "500 learned after the restart")

    asyncio.run(outage())

    async def refused() -> None:
        async with running_worker(settings) as worker:
            await wait_for(lambda: worker.agent.ready.is_set(), 60, "partitions assigned")
            worker.agent.fail(ValueError("restore refused"))

    with pytest.raises(ValueError, match="restore refused"):
        asyncio.run(refused())
