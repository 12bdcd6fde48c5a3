"""Broker loss: the embedded broker dies under a running system and comes back empty.

`eddy up` restarts it on the same address and recreates the topics; the worker,
retrainer and exporter are not restarted: they report the outage, reconnect by
themselves, notice that their checkpoints point into topics that are gone, and
learn the new data while keeping what they had learned.
"""

from __future__ import annotations

import json
import os
import signal
import subprocess
from pathlib import Path

from streams.dashboard import sum_samples
from streams.supervisor import eddy_argv, scrape
from tests.integration.test_up import REPO, alive, eddy_env, wait_until


def stream_examples(port: int) -> float:
    """Examples learned (from the worker's restored state); -1 while it does not answer."""
    samples = scrape(port, timeout_s=2)
    return -1.0 if samples is None else sum_samples(samples, "eddy_stream_examples")


def produce(bootstrap: str, prefix: str, n: int) -> None:
    cmd = eddy_argv(
        "produce", "--dataset", "sea", "--n", str(n), "--id-prefix", prefix, "--no-progress",
        "--bootstrap", bootstrap, "--producer-idempotence", "off",
    )  # fmt: skip
    subprocess.run(cmd, cwd=REPO, env=eddy_env(), check=True, capture_output=True, timeout=120)


def test_workers_ride_out_a_broker_restart_that_loses_every_topic(tmp_path: Path) -> None:
    data = tmp_path / "eddy-data"
    out = tmp_path / "up.out"
    cmd = eddy_argv("up", "--partitions", "1", "--data-dir", str(data), "--join-ttl-s", "2")
    with open(out, "wb") as sink:
        up = subprocess.Popen(cmd, cwd=REPO, env=eddy_env(), stdout=sink, stderr=sink)
    try:
        status = wait_until(
            lambda: (data / "up.json").exists() and json.loads(
                (data / "up.json").read_text()), 60, "up.json")  # fmt: skip
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


def test_a_standalone_worker_reports_the_outage_and_resumes_on_the_new_broker(
    tmp_path: Path,
) -> None:
    """`eddy worker` against a broker that is gone for a while, then back empty."""
    from streams.broker import EmbeddedBroker, free_port

    port, metrics = free_port("127.0.0.1"), free_port("127.0.0.1")
    bootstrap = f"127.0.0.1:{port}"
    env = eddy_env() | {"EDDY_BOOTSTRAP": bootstrap, "EDDY_DATA_DIR": str(tmp_path / "data"),
                        "EDDY_PARTITIONS": "1", "EDDY_PRODUCER_IDEMPOTENCE": "off",
                        "EDDY_METRICS_PORT": str(metrics), "EDDY_JOIN_TTL_S": "2"}  # fmt: skip
    topics = eddy_argv("topics", "create")
    broker = EmbeddedBroker(port=port).start()
    log = tmp_path / "worker.log"
    worker = None
    try:
        subprocess.run(topics, cwd=REPO, env=env, check=True, capture_output=True)
        with open(log, "wb") as sink:
            worker = subprocess.Popen(eddy_argv("worker"), cwd=REPO, env=env, stdout=sink,
                                      stderr=sink)  # fmt: skip
        produce(bootstrap, "before", 2000)
        wait_until(lambda: stream_examples(metrics) >= 2000, 90, "2,000 examples learned")
        broker.stop()
        wait_until(lambda: "does not answer" in log.read_text(), 30, "the outage reported")
        broker.start()
        subprocess.run(topics, cwd=REPO, env=env, check=True, capture_output=True)
        produce(bootstrap, "after", 2000)
        wait_until(lambda: stream_examples(metrics) >= 4000, 180, "4,000 examples learned")
        assert stream_examples(metrics) == 4000 and worker.poll() is None
        assert "Kafka is reachable again after" in log.read_text()
    finally:
        if worker is not None:
            worker.send_signal(signal.SIGTERM)
            worker.wait(60)
        broker.stop()
