"""Why faust's per-event agent is slow here: the same topic read three ways, side by side.

1. raw aiokafka ``getmany`` + orjson decode (the ceiling for a Python consumer);
2. a faust-streaming agent iterating the stream event by event;
3. the same agent with ``stream.take(1000, within=1)``.

Run: ``.venv/bin/python bench/faust_ceiling.py [--n 100000]``; it starts its own
embedded broker and prints events/s and the ratio to the ceiling. Under
``py-spy record`` (see bench/README.md) it shows where faust spends its time.
"""

from __future__ import annotations

import argparse
import asyncio
import os
import sys
import time
import uuid

import orjson

from eddy.streams.kafka.broker import EmbeddedBroker, die_with_parent
from eddy.streams.settings import Settings


async def fill(bootstrap: str, topic: str, n: int) -> None:
    from aiokafka import AIOKafkaProducer
    from aiokafka.admin import AIOKafkaAdminClient, NewTopic

    admin = AIOKafkaAdminClient(bootstrap_servers=bootstrap)
    await admin.start()
    await admin.create_topics([NewTopic(topic, 1, 1)])
    await admin.close()
    producer = AIOKafkaProducer(bootstrap_servers=bootstrap, linger_ms=5, acks=1)
    await producer.start()
    payload = {"id": "", "features": {f"x{i}": i * 0.5 for i in range(20)}, "ts": 0}
    futures = []
    for i in range(n):
        payload["id"] = f"e{i}"
        futures.append(await producer.send(topic, orjson.dumps(payload), key=b"%d" % i))
    await asyncio.gather(*futures)
    await producer.stop()


async def raw_aiokafka(bootstrap: str, topic: str, n: int) -> float:
    from aiokafka import AIOKafkaConsumer, TopicPartition

    consumer = AIOKafkaConsumer(bootstrap_servers=bootstrap, enable_auto_commit=False)
    await consumer.start()
    tp = TopicPartition(topic, 0)
    consumer.assign([tp])
    consumer.seek(tp, 0)
    seen = 0
    started = time.perf_counter()
    while seen < n:
        batch = await consumer.getmany(timeout_ms=200, max_records=5000)
        for records in batch.values():
            for r in records:
                orjson.loads(r.value)
            seen += len(records)
    elapsed = time.perf_counter() - started
    await consumer.stop()
    return n / elapsed


def faust_rate(bootstrap: str, topic: str, n: int, take: int) -> float:
    """Run a faust worker in a child process; it prints its rate."""
    import subprocess

    code = FAUST_AGENT.format(
        bootstrap=bootstrap, topic=topic, n=n, take=take, app=uuid.uuid4().hex
    )
    out = subprocess.run(
        [sys.executable, "-c", code],
        capture_output=True,
        text=True,
        timeout=300,
        cwd="/tmp",
        preexec_fn=die_with_parent,  # a killed benchmark leaves no faust worker behind
    )
    for line in out.stdout.splitlines():
        if line.startswith("RATE "):
            return float(line.split()[1])
    raise RuntimeError("faust run failed:\n" + out.stdout[-2000:] + out.stderr[-3000:])


FAUST_AGENT = """
import os, sys, time, faust, orjson, logging
logging.disable(logging.WARNING if os.environ.get("QUIET", "1") == "1" else logging.NOTSET)
app = faust.App("bench-{app}", broker="kafka://{bootstrap}", value_serializer="raw",
                broker_session_timeout=6, broker_heartbeat_interval=2, web_enabled=False,
                topic_disable_leader=True, stream_buffer_maxsize=131072)
topic = app.topic("{topic}", value_serializer="raw")
state = {{"seen": 0, "t0": None}}

def done():
    rate = state["seen"] / (time.perf_counter() - state["t0"])
    os.write(1, ("RATE %f" % rate).encode() + bytes([10]))  # fd 1: faust redirects sys.stdout
    os._exit(0)  # the measurement is taken; skip faust's slow shutdown

@app.agent(topic)
async def consume(stream):
    if {take} > 1:
        async for values in stream.take({take}, within=1):
            state["t0"] = state["t0"] or time.perf_counter()
            for v in values:
                orjson.loads(v)
            state["seen"] += len(values)
            if state["seen"] >= {n}:
                done()
    else:
        async for value in stream:
            state["t0"] = state["t0"] or time.perf_counter()
            orjson.loads(value)
            state["seen"] += 1
            if state["seen"] >= {n}:
                done()

sys.argv = ["bench", "worker", "-l", "error", "--without-web"]
app.main()
"""


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--n", type=int, default=100_000)
    args = parser.parse_args()
    Settings()  # fail early on bad EDDY_* values
    with EmbeddedBroker() as broker:
        topic = f"bench-{uuid.uuid4().hex[:8]}"
        asyncio.run(fill(broker.bootstrap, topic, args.n))
        ceiling = asyncio.run(raw_aiokafka(broker.bootstrap, topic, args.n))
        per_event = faust_rate(broker.bootstrap, topic, args.n, take=1)
        take = faust_rate(broker.bootstrap, topic, args.n, take=1000)
    print(f"{'path':<34}{'events/s':>12}{'vs ceiling':>12}")
    for name, rate in (
        ("aiokafka getmany + orjson", ceiling),
        ("faust agent, per event", per_event),
        ("faust agent, take(1000)", take),
    ):
        print(f"{name:<34}{rate:>12,.0f}{rate / ceiling:>11.1%}")
    print(f"({os.cpu_count()} cores, {args.n:,} events of ~400 bytes, embedded Tansu broker)")


if __name__ == "__main__":
    main()
