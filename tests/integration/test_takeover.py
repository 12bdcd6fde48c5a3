"""Kafka is the only shared infrastructure: a worker on another machine (another data
directory) takes over a killed worker's partitions from the changelog, and a serving
client with an empty data directory serves the champion and the online model."""

from __future__ import annotations

import asyncio
import itertools
import os
import re
import signal
import subprocess
import sys
import time
from pathlib import Path

import orjson

from eddy.consumers.exporter import Exporter
from eddy.consumers.hotswap import HotSwapClient
from eddy.consumers.retrainer import Retrainer
from eddy.streams.kafka.admin import create_topics
from eddy.streams.kafka.clients import start_producer
from eddy.streams.kafka.topics import Topics
from eddy.streams.ops import sources
from eddy.streams.ops.producer import ProduceOptions, produce
from eddy.streams.settings import settings_env
from eddy.streams.state.changelog import Changelog
from eddy.streams.wire.codec import make_event
from eddy.streams.wire.keys import state_key
from tests.integration.worker_helpers import running_consumer, wait_for

# Four streams, one per partition (murmur2 of the name), 4,500 samples each.
STREAMS = ("s0", "s1", "s16", "s5")
PER_STREAM = 4_500
KEY = "takeover-test-key"


def _start(settings, data_dir: Path, log: Path) -> subprocess.Popen[bytes]:
    env = {k: v for k, v in os.environ.items() if not k.startswith("EDDY_")}
    env |= settings_env(settings.with_overrides({"data_dir": data_dir}))
    env |= {
        "EDDY_MODEL": "logreg",
        "EDDY_CHECKPOINT_INTERVAL_S": "1",
        "EDDY_SNAPSHOT_INTERVAL_S": "2",
        "PYTHONUNBUFFERED": "1",
    }
    command = [sys.executable, "-m", "eddy.streams.ops.cli", "worker"]
    return subprocess.Popen(command, env=env, stdout=log.open("ab"), stderr=subprocess.STDOUT)


def _state(settings, data_dir: Path, partition: int):
    """A partition's last checkpoint, as the changelog holds it (``data_dir`` is the
    reader's cache: an empty one reads everything from Kafka)."""

    async def load():
        group = f"{settings.topics.prefix}worker"
        changelog = Changelog(
            settings.kafka,
            Topics(settings.topics.prefix).changelog,
            state_key(settings.state),
            data_dir / "reader" / group,
            group,
        )
        return await changelog.assign(partition)

    restored = asyncio.run(load())
    return restored.checkpoint.state if restored is not None else None


def _learned(settings, data_dir: Path) -> dict[str, int]:
    out: dict[str, int] = {}
    for p in range(4):
        state = _state(settings, data_dir, p)
        for name, learner in state.learners.items() if state else ():
            out[name] = learner.learned
    return out


def _wait_log(log: Path, pattern: str, within: float, proc: subprocess.Popen[bytes]) -> str:
    deadline = time.monotonic() + within
    while time.monotonic() < deadline:
        text = log.read_text(errors="replace")
        if re.search(pattern, text):
            return text
        assert proc.poll() is None, f"the worker exited ({proc.returncode}):\n{text[-3000:]}"
        time.sleep(0.2)
    raise AssertionError(f"not within {within} s: {pattern!r} in {log}:\n{text[-3000:]}")


def test_a_worker_on_another_machine_takes_over_from_the_changelog(settings, tmp_path):
    settings = settings.with_overrides(
        {
            "topic_prefix": settings.topics.prefix + "to.",
            "partitions": 4,
            "signing_key": KEY,
            "retrain_epochs": 3,
            "retrain_folds": 2,
            "retrain_hidden": (16,),
            "retrain_min_examples": 500,
            "retrain_wait_s": 2.0,  # the drifts of other streams: windows never filled
        }
    )
    asyncio.run(create_topics(settings.kafka, settings.topics))
    machine_a, machine_b = tmp_path / "a", tmp_path / "b"
    log_a, log_b = tmp_path / "a.log", tmp_path / "b.log"

    async def send_all() -> None:
        await asyncio.gather(
            *(
                produce(
                    settings.kafka,
                    settings.topics.prefix,
                    itertools.islice(sources.open_named("sea", seed=i), PER_STREAM),
                    ProduceOptions(
                        n=PER_STREAM, inline_labels=True, rate=700, stream=name, id_prefix=name
                    ),
                )
                for i, name in enumerate(STREAMS)
            )
        )

    a = _start(settings, machine_a, log_a)
    b = None
    loop = asyncio.new_event_loop()
    try:
        _wait_log(log_a, r"assigned partitions \[0, 1, 2, 3\]", 60, a)
        production = loop.run_in_executor(None, lambda: asyncio.run(send_all()))
        deadline = time.monotonic() + 60
        while sum(_learned(settings, machine_a).values()) < 2_000:
            assert time.monotonic() < deadline, _learned(settings, machine_a)
            time.sleep(0.2)
        b = _start(settings, machine_b, log_b)
        _wait_log(log_b, r"assigned partitions", 90, b)  # B holds some partitions now
        time.sleep(2)  # let both learn a while (checkpoints every second)
        os.kill(a.pid, signal.SIGKILL)
        a.wait()
        _wait_log(log_b, r"assigned partitions \[0, 1, 2, 3\]", 90, b)
        loop.run_until_complete(production)
        deadline = time.monotonic() + 120
        while _learned(settings, machine_b) != dict.fromkeys(STREAMS, PER_STREAM):
            assert time.monotonic() < deadline, _learned(settings, machine_b)
            assert b.poll() is None, log_b.read_text()[-3000:]
            time.sleep(0.5)
        champion, online = asyncio.run(_champion_and_online(settings, tmp_path / "c"))
        b.send_signal(signal.SIGTERM)
        assert b.wait(60) == 0, log_b.read_text()[-3000:]
    finally:
        for proc in (a, b):
            if proc is not None and proc.poll() is None:
                proc.kill()
                proc.wait()
        loop.close()

    # Exactly once: each stream learned every sample sent to it, no more.
    final = _learned(settings, machine_b)
    assert final == dict.fromkeys(STREAMS, PER_STREAM), final
    # B restored A's partitions from the changelog (machine B never saw A's files),
    # logging the offsets it resumed at.
    text = log_b.read_text()
    restored = re.findall(
        r"partition (\d) restored from changelog \S+ \(generation (\d+)\), "
        r"resuming at \{.*'samples': (\d+)",
        text,
    )
    assert {p for p, _, _ in restored} == {"0", "1", "2", "3"}, text[-3000:]
    assert all(int(offset) > 0 for _, _, offset in restored)
    # Re-sent examples are bounded by one checkpoint interval's worth (1 s at ~2,800/s).
    duplicates = sum(_state(settings, machine_b, p).counts.get("duplicates", 0) for p in range(4))
    assert duplicates <= 3_000, duplicates
    assert champion == "v0001" and online.startswith("online-1@")


async def _champion_and_online(settings, empty_dir: Path) -> tuple[str | None, str]:
    """From a third machine with an empty data directory: serve s0's online model before
    any retrain, then retrain s0 once and serve the int8 champion, both scored on labels."""

    rows = [{"0": 5.0, "1": 4.0, "2": 1.0}, {"0": 1.0, "1": 1.0, "2": 9.0}]
    client = HotSwapClient(
        settings.kafka,
        "s0",
        prefix=settings.topics.prefix,
        data_dir=empty_dir,
        signing_key=KEY,
        follow="both",
        serve="online",
    )
    await client.start()
    try:
        # Before any retrain: the online model answers; there is no champion yet.
        await wait_for(lambda: "online" in client.held(), 60, "the online model held")
        assert "champion" not in client.held()
        assert all(p in (True, False) for p in client.predict(rows))
        async with (
            running_consumer(settings, Retrainer) as retrainer,
            running_consumer(settings, Exporter) as exporter,
        ):
            request = make_event(
                "retrain.requested",
                "eddy/test",
                {"stream": "s0", "reason": "manual", "window": {"last_n": 3000}},
                subject="s0",
                signing_key=KEY.encode(),
            )
            producer = await start_producer(settings.kafka)
            try:
                await producer.send_and_wait(
                    Topics(settings.topics.prefix).events, orjson.dumps(request)
                )
            finally:
                await producer.stop()
            await wait_for(
                lambda: retrainer.handled >= 1 and exporter.handled >= 1,
                120,
                "s0 retrained and exported",
            )
        # After it: the int8 champion is swapped in; both are scored side by side.
        await wait_for(lambda: "champion" in client.held(), 60, "the champion held")
        client.serving = "champion"
        assert all(p in (True, False) for p in client.predict(rows))
        client.observe(rows, [True, False])
        assert {"online", "champion"} <= set(client.scores)
        return client.held()["champion"], client.held()["online"]
    finally:
        await client.stop()
