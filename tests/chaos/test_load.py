"""Load: a burst of more than 10x the sustained rate. Memory stays bounded (the worker
fetches bounded batches and the join is capped: nothing queues without limit), the lag
drains afterwards, and every sample is learned or expired."""

from __future__ import annotations

import asyncio
import os
import signal
import subprocess
import threading
import time
from pathlib import Path

from eddy.streams.kafka.broker import free_port
from eddy.streams.observe.dashboard import sum_samples
from eddy.streams.ops.producer import ProduceOptions, produce
from eddy.streams.ops.sources import open_named
from eddy.streams.ops.supervisor import eddy_argv
from eddy.streams.ops.supervisor import scrape as scrape_metrics
from eddy.streams.settings import Settings, settings_env
from tests.integration.test_up import REPO, wait_until

SUSTAINED_RATE = 1_000  # samples/s
SUSTAINED_N = 10_000
BURST_N = 120_000  # as fast as the producer goes: ~12k samples/s here, 12x sustained


def scrape(port: int) -> dict[str, float]:
    """Each eddy metric summed over its labels, and the join's unmatched state by reason."""
    samples = scrape_metrics(port, timeout_s=2)
    if samples is None:
        return {}
    out = {name: sum_samples(samples, name) for name in samples if name.startswith("eddy_")}
    for labels, value in samples.get("eddy_join_unmatched_state", []):
        out[f"unmatched_{labels['reason']}"] = value
    return out


def test_a_burst_keeps_memory_bounded_and_drains(settings: Settings, tmp_path: Path) -> None:
    settings = settings.with_overrides(
        {
            "topic_prefix": "load." + settings.topics.prefix,
            "partitions": 1,
            "join_ttl_s": 3.0,
            "producer_idempotence": "off",
        }
    )
    from eddy.streams.kafka.admin import create_topics

    asyncio.run(create_topics(settings.kafka, settings.topics))
    port = free_port()
    env = {k: v for k, v in os.environ.items() if not k.startswith("EDDY_")}
    env |= settings_env(settings) | {"EDDY_METRICS_PORT": str(port)}
    log = tmp_path / "worker.log"
    with open(log, "wb") as sink:
        worker = subprocess.Popen(eddy_argv("worker"), cwd=REPO, env=env, stdout=sink, stderr=sink)
    samples: list[dict[str, float]] = []
    stop = threading.Event()

    def watch() -> None:
        while not stop.is_set():
            figures = scrape(port)
            if figures:
                samples.append(figures | {"t": time.monotonic()})
            time.sleep(0.25)

    watcher = threading.Thread(target=watch, daemon=True)
    try:
        wait_until(lambda: scrape(port), 60, "the worker's metrics")
        watcher.start()
        sustained = ProduceOptions(
            n=SUSTAINED_N, label_delay=100, seed=1, rate=SUSTAINED_RATE, id_prefix="steady"
        )
        asyncio.run(
            produce(settings.kafka, settings.topics.prefix, open_named("sea", seed=1), sustained)
        )
        wait_until(
            lambda: scrape(port).get("eddy_stream_examples", 0) >= SUSTAINED_N - 50,
            60,
            "the sustained part learned",
        )
        baseline = max(s["eddy_process_resident_memory_bytes"] for s in samples)
        started = time.monotonic()
        burst = ProduceOptions(n=BURST_N, label_delay=100, seed=2, id_prefix="burst")
        report = asyncio.run(
            produce(settings.kafka, settings.topics.prefix, open_named("sea", seed=2), burst)
        )
        produced = SUSTAINED_N + report.samples

        def accounted() -> float:
            f = scrape(port)
            return f.get("eddy_stream_examples", 0) + f.get("unmatched_sample_expired", 0)

        wait_until(lambda: accounted() >= produced, 240, "every sample learned or expired")
        wait_until(lambda: scrape(port).get("eddy_consumer_lag", 1) == 0, 60, "lag drained")
        final = accounted()
        unmatched = {k: v for k, v in scrape(port).items() if k.startswith("unmatched_")}
    finally:
        stop.set()
        worker.send_signal(signal.SIGTERM)
        worker.wait(60)
    burst_samples = [s for s in samples if s["t"] >= started]
    peak = max(s["eddy_process_resident_memory_bytes"] for s in burst_samples)
    max_lag = max(s.get("eddy_consumer_lag", 0) for s in burst_samples)
    offered = report.samples / report.seconds
    print(
        f"\nburst {report.samples:,} at {offered:,.0f}/s ({offered / SUSTAINED_RATE:.0f}x); "
        f"max lag {max_lag:,.0f}; RSS {baseline / 2**20:.0f} -> peak {peak / 2**20:.0f} MiB"
    )
    assert offered >= 10 * SUSTAINED_RATE, offered
    assert max_lag > 1000  # the burst did queue up in Kafka, not in the worker
    # Bounded: the worker holds bounded fetches and a capped join, not the backlog.
    assert peak - baseline < 200 * 2**20, (baseline, peak)
    assert final == produced, (final, produced, unmatched)
    # Labels were never dropped: under load no sample may expire waiting for one.
    assert unmatched.get("unmatched_sample_expired", 0) == 0, unmatched
