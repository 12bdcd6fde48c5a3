"""``eddy serve`` over HTTP against ``HotSwapClient.predict`` in process, side by side.

A worker learns 3,000 SEA samples and publishes its online model; then (worker stopped,
so nothing else competes for the two cores) an ``eddy serve`` process with an empty data
directory and an in-process ``HotSwapClient`` both load that model from the registry on
Kafka. Rounds alternate: N sequential ``predict`` calls in process, then N sequential
``POST /v2/models/default/infer`` requests (JSON, one input per feature, one kept-alive
connection, Python's ``http.client``) at batch 1 and at batch 64. Figures: requests (calls)
per second, p50/p99 per request, and the HTTP / in-process ratio of requests per second.

Run alone: ``python bench/serve.py [--requests 2000]``; ``bench/run.py`` runs it as its
``serve`` section.
"""

from __future__ import annotations

import argparse
import asyncio
import http.client
import itertools
import json
import os
import signal
import subprocess
import sys
import tempfile
import time
import uuid
from pathlib import Path
from typing import Any

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from eddy.consumers.hotswap import HotSwapClient
from eddy.streams.app import App
from eddy.streams.kafka.admin import create_topics
from eddy.streams.kafka.broker import EmbeddedBroker
from eddy.streams.ops import sources
from eddy.streams.ops.producer import ProduceOptions, produce
from eddy.streams.ops.supervisor import eddy_argv
from eddy.streams.settings import Settings, settings_env

KEY = "bench-serve-key"
ROUNDS = 4


def _settings(broker: EmbeddedBroker, data_dir: Path) -> Settings:
    settings = Settings.build(
        bootstrap=broker.bootstrap,
        topic_prefix=f"bs{uuid.uuid4().hex[:6]}.",
        partitions=1,
        data_dir=data_dir / "worker",
        producer_idempotence="off",
        signing_key=KEY,
        snapshot_interval_s=1.0,
    )
    asyncio.run(create_topics(settings.kafka, settings.topics))
    return settings


async def _learn(settings: Settings, n: int) -> None:
    """A worker learns ``n`` samples and publishes its online model, then stops."""
    app = App(settings=settings)
    started: asyncio.Future[Any] = asyncio.get_running_loop().create_future()
    task = asyncio.create_task(app.run_async(create_topics=False, on_start=started))
    worker = await started
    try:
        data = itertools.islice(sources.open_named("sea", seed=1), n)
        await produce(
            settings.kafka, settings.topics.prefix, data, ProduceOptions(n=n, inline_labels=True)
        )
        deadline = time.monotonic() + 120
        while (s := worker.stream("default")) is None or s.learned < n:
            if time.monotonic() > deadline:
                msg = "the worker did not learn the bench stream in 120 s"
                raise RuntimeError(msg)
            await asyncio.sleep(0.1)
        await asyncio.sleep(2.5)  # past one snapshot interval: the online model is published
    finally:
        worker.stop()
        await asyncio.wait_for(task, 60)


def _start_server(settings: Settings, data_dir: Path) -> tuple[subprocess.Popen[bytes], str]:
    env = {k: v for k, v in os.environ.items() if not k.startswith("EDDY_")}
    env |= settings_env(settings.with_overrides({"data_dir": data_dir}))
    env |= {"EDDY_SERVE_PORT": "0", "EDDY_LOG_LEVEL": "WARNING", "PYTHONUNBUFFERED": "1"}
    log = (data_dir.parent / "serve.log").open("ab")
    process = subprocess.Popen(eddy_argv("serve"), env=env, stdout=log, stderr=log)
    deadline = time.monotonic() + 60
    status = data_dir / "serve.json"
    while not status.exists():
        if process.poll() is not None or time.monotonic() > deadline:
            msg = f"eddy serve did not start (see {data_dir.parent / 'serve.log'})"
            raise RuntimeError(msg)
        time.sleep(0.05)
    return process, json.loads(status.read_text())["url"]


def _body(rows: list[dict[str, float]]) -> bytes:
    names = list(rows[0])
    inputs = [
        {"name": f, "shape": [len(rows)], "datatype": "FP64", "data": [r[f] for r in rows]}
        for f in names
    ]
    return json.dumps({"inputs": inputs}).encode()


def _wait_ready(connection: http.client.HTTPConnection, body: bytes) -> None:
    deadline = time.monotonic() + 60
    while True:
        connection.request("POST", "/v2/models/default/versions/online/infer", body)
        response = connection.getresponse()
        response.read()
        if response.status == 200:
            return
        if time.monotonic() > deadline:
            msg = f"eddy serve answered {response.status} for 60 s"
            raise RuntimeError(msg)
        time.sleep(0.2)


def _http_round(connection: http.client.HTTPConnection, body: bytes, n: int) -> list[float]:
    times = []
    headers = {"Content-Type": "application/json"}
    for _ in range(n):
        t = time.perf_counter()
        connection.request("POST", "/v2/models/default/infer", body, headers)
        response = connection.getresponse()
        answer = response.read()
        times.append(time.perf_counter() - t)
        if response.status != 200:
            msg = f"eddy serve answered {response.status}: {answer[:200]!r}"
            raise RuntimeError(msg)
    return times


def _local_round(client: HotSwapClient, rows: list[dict[str, float]], n: int) -> list[float]:
    times = []
    for _ in range(n):
        t = time.perf_counter()
        client.predict(rows)
        times.append(time.perf_counter() - t)
    return times


def _figures(times: list[float]) -> dict[str, float]:
    return {
        "per_s": len(times) / sum(times),
        "p50_ms": float(np.percentile(times, 50) * 1e3),
        "p99_ms": float(np.percentile(times, 99) * 1e3),
    }


async def _measure(settings: Settings, url: str, data_dir: Path, requests: int) -> dict[str, Any]:
    client = HotSwapClient(
        settings.kafka,
        "default",
        prefix=settings.topics.prefix,
        data_dir=data_dir / "in-process",
        signing_key=KEY,
        follow="online",
    )
    await client.start()
    try:
        rows_all = [x for x, _ in itertools.islice(sources.open_named("sea", seed=9), 64)]
        host = url.removeprefix("http://")
        connection = http.client.HTTPConnection(host, timeout=30)
        out: dict[str, Any] = {"requests_per_round": requests // ROUNDS, "rounds": ROUNDS}
        try:
            _wait_ready(connection, _body(rows_all[:1]))
            for batch in (1, 64):
                rows = rows_all[:batch]
                body = _body(rows)
                local: list[float] = []
                remote: list[float] = []
                _local_round(client, rows, 50)  # warm both
                _http_round(connection, body, 50)
                for _ in range(ROUNDS):
                    local += _local_round(client, rows, requests // ROUNDS)
                    remote += _http_round(connection, body, requests // ROUNDS)
                figures = {"in_process": _figures(local), "http": _figures(remote)}
                figures["http/in_process"] = (
                    figures["http"]["per_s"] / figures["in_process"]["per_s"]
                )
                figures["body_bytes"] = len(body)
                out[f"batch{batch}"] = figures
                print(
                    f"  serve batch {batch}: HTTP {figures['http']['per_s']:,.0f} req/s "
                    f"(p50 {figures['http']['p50_ms']:.2f} ms, p99 {figures['http']['p99_ms']:.2f} ms)"
                    f" vs in-process predict {figures['in_process']['per_s']:,.0f} calls/s "
                    f"(p50 {figures['in_process']['p50_ms']:.3f} ms, p99 "
                    f"{figures['in_process']['p99_ms']:.3f} ms): ratio {figures['http/in_process']:.3f}",
                    flush=True,
                )
        finally:
            connection.close()
        out["model_version"] = client.version
        return out
    finally:
        await client.stop()


def serving(broker: EmbeddedBroker, data_dir: str | Path, requests: int = 2000) -> dict[str, Any]:
    """The ``serve`` section of ``bench/run.py``."""
    root = Path(tempfile.mkdtemp(prefix="serve-", dir=data_dir))
    settings = _settings(broker, root)
    asyncio.run(_learn(settings, 3000))
    process, url = _start_server(settings, root / "serve-empty")
    try:
        return asyncio.run(_measure(settings, url, root, requests))
    finally:
        process.send_signal(signal.SIGTERM)
        try:
            process.wait(30)
        except subprocess.TimeoutExpired:
            process.kill()
            process.wait()


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--requests", type=int, default=2000, help="requests per batch size")
    args = parser.parse_args()
    with EmbeddedBroker() as broker, tempfile.TemporaryDirectory() as data_dir:
        print(json.dumps(serving(broker, data_dir, args.requests), indent=2))


if __name__ == "__main__":
    main()
