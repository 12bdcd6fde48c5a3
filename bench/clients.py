"""The Kafka client by measurement: the same topic read by aiokafka (eddy's runtime
client) and by librdkafka (confluent-kafka), undecoded and decoded, in one run, beside
what eddy's engine spends per event on the same records.

``python bench/clients.py [--n 200000]`` (``run.py`` section ``clients``). Each client
reads the topic from the start, as a worker reads a backlog: aiokafka ``getmany(5000)``,
librdkafka ``consume(5000)``; "decoded" adds eddy's batch decoder
(:func:`eddy.streams.wire.batch.decode_samples`) on each fetched batch. Two rounds each,
alternating; the better round counts (a shared machine's noise only slows).
"""

from __future__ import annotations

import argparse
import asyncio
import sys
import time
import uuid
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from aiokafka import AIOKafkaConsumer, TopicPartition

from eddy.streams.kafka.admin import create_topics
from eddy.streams.kafka.broker import EmbeddedBroker
from eddy.streams.ops import sources
from eddy.streams.ops.producer import ProduceOptions, produce
from eddy.streams.settings import Settings
from eddy.streams.wire.batch import decode_samples

MAX_BYTES = 1_048_576


async def _aiokafka(bootstrap: str, topic: str, n: int, decode: bool) -> float:
    consumer = AIOKafkaConsumer(bootstrap_servers=bootstrap, enable_auto_commit=False)
    await consumer.start()
    tp = TopicPartition(topic, 0)
    consumer.assign([tp])
    consumer.seek(tp, 0)
    seen, started = 0, None
    try:
        while seen < n:
            for records in (await consumer.getmany(max_records=5000, timeout_ms=200)).values():
                started = started or time.perf_counter()
                if decode:
                    decode_samples([r.value for r in records], MAX_BYTES)
                seen += len(records)
    finally:
        await consumer.stop()
    assert started is not None
    return n / (time.perf_counter() - started)


def _librdkafka(bootstrap: str, topic: str, n: int, decode: bool) -> float:
    import confluent_kafka

    consumer = confluent_kafka.Consumer(
        {
            "bootstrap.servers": bootstrap,
            "group.id": f"bench-{uuid.uuid4().hex[:6]}",
            "enable.auto.commit": False,
            "auto.offset.reset": "earliest",
        }
    )
    consumer.assign([confluent_kafka.TopicPartition(topic, 0, 0)])
    seen, started = 0, None
    try:
        while seen < n:
            messages = consumer.consume(5000, timeout=0.2)
            if not messages:
                continue
            started = started or time.perf_counter()
            if decode:
                decode_samples([m.value() for m in messages], MAX_BYTES)
            seen += len(messages)
    finally:
        consumer.close()
    assert started is not None
    return n / (time.perf_counter() - started)


def measure(bootstrap: str, topic: str, n: int) -> dict[str, Any]:
    """Records per second of each client, undecoded and decoded (best of two rounds)."""
    best: dict[str, float] = {}
    for _ in range(2):
        for decode in (False, True):
            suffix = "decoded" if decode else "undecoded"
            runs = {
                f"aiokafka_{suffix}": lambda d=decode: asyncio.run(
                    _aiokafka(bootstrap, topic, n, d)
                ),
                f"librdkafka_{suffix}": lambda d=decode: _librdkafka(bootstrap, topic, n, d),
            }
            for name, run in runs.items():
                best[name] = max(best.get(name, 0.0), run())
    return {f"{k}_per_s": v for k, v in best.items()}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--n", type=int, default=200_000)
    args = parser.parse_args()
    with EmbeddedBroker() as broker:
        settings = Settings.build(
            bootstrap=broker.bootstrap,
            topic_prefix=f"c{uuid.uuid4().hex[:6]}.",
            partitions=1,
            producer_idempotence="off",
        )
        asyncio.run(create_topics(settings.kafka, settings.topics))
        data = sources.open_named("sea", seed=1)
        options = ProduceOptions(n=args.n, inline_labels=True)
        asyncio.run(produce(settings.kafka, settings.topics.prefix, data, options))
        figures = measure(broker.bootstrap, settings.topics.prefix + "samples", args.n)
    for name, rate in figures.items():
        print(f"  {name.removesuffix('_per_s'):<24}{rate:>12,.0f}/s  {1e6 / rate:6.2f} µs/event")


if __name__ == "__main__":
    main()
