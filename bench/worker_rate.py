"""eddy's worker end to end on a backlog: samples (labels inline) → join → learner.

Produces ``--n`` samples ahead of time on one partition, starts the worker in
process and times from its first learned example to the last, for each model.
Beside it, the same stream through River's ``progressive_val_score`` in process
and raw aiokafka reads of the samples topic, measured in the same run.

Run: ``.venv/bin/python bench/worker_rate.py [--n 100000] [--models logreg,torch-linear]``
"""

from __future__ import annotations

import argparse
import asyncio
import itertools
import shutil
import tempfile
import time
import uuid

import orjson
from aiokafka import AIOKafkaConsumer, TopicPartition

from eddy.streams.agents.worker import Worker, run_worker
from eddy.streams.kafka.admin import create_topics
from eddy.streams.kafka.broker import EmbeddedBroker
from eddy.streams.kafka.topics import Topics
from eddy.streams.ops import sources
from eddy.streams.ops.producer import ProduceOptions, produce
from eddy.streams.settings import Settings


async def raw_rate(settings: Settings, topic: str, n: int) -> float:
    consumer = AIOKafkaConsumer(
        bootstrap_servers=settings.kafka.bootstrap, enable_auto_commit=False
    )
    await consumer.start()
    tp = TopicPartition(topic, 0)
    consumer.assign([tp])
    consumer.seek(tp, 0)
    seen, started = 0, time.perf_counter()
    while seen < n:
        for records in (await consumer.getmany(timeout_ms=200, max_records=5000)).values():
            for r in records:
                orjson.loads(r.value)
            seen += len(records)
    await consumer.stop()
    return n / (time.perf_counter() - started)


async def worker_rate(settings: Settings, n: int) -> float:
    started_future: asyncio.Future[Worker] = asyncio.get_running_loop().create_future()
    task = asyncio.create_task(run_worker(settings, on_start=started_future))
    worker = await started_future
    first = None
    while True:
        stream = worker.learner.stream("default")
        learned = stream.learned if stream else 0
        if learned and first is None:
            first = (time.perf_counter(), learned)
        if learned >= n:
            break
        await asyncio.sleep(0.01)
    elapsed = time.perf_counter() - first[0]
    worker.stop()
    await task
    return (n - first[1]) / elapsed


def river_rate(n: int) -> float:
    from river import evaluate, linear_model, metrics

    data = list(itertools.islice(sources.open_named("sea", seed=1), n))
    started = time.perf_counter()
    evaluate.progressive_val_score(data, linear_model.LogisticRegression(), metrics.Accuracy())
    return n / (time.perf_counter() - started)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--n", type=int, default=100_000)
    parser.add_argument("--models", default="logreg,torch-linear")
    args = parser.parse_args()
    rows = []
    data_dir = tempfile.mkdtemp(prefix="eddy-bench-")
    with EmbeddedBroker() as broker:
        for model in args.models.split(","):
            settings = Settings(
                bootstrap=broker.bootstrap,
                topic_prefix=f"b{uuid.uuid4().hex[:6]}.",
                partitions=1,
                data_dir=data_dir,
                model=model,
                producer_idempotence="off",
            )
            asyncio.run(create_topics(settings.kafka, settings.topics))
            options = ProduceOptions(n=args.n, inline_labels=True)
            asyncio.run(
                produce(
                    settings.kafka,
                    settings.topics.prefix,
                    sources.open_named("sea", seed=1),
                    options,
                )
            )
            raw = asyncio.run(raw_rate(settings, Topics(settings.topics.prefix).samples, args.n))
            rows.append((f"aiokafka read + decode ({model} run)", raw, raw))
            rows.append(
                (
                    f"eddy worker end to end, {model}",
                    asyncio.run(worker_rate(settings, args.n)),
                    raw,
                )
            )
    shutil.rmtree(data_dir, ignore_errors=True)
    river = river_rate(args.n)
    print(f"{'path':<44}{'events/s':>10}{'vs raw':>9}")
    for name, rate, raw in rows:
        print(f"{name:<44}{rate:>10,.0f}{rate / raw:>8.1%}")
    print(f"{'River progressive_val_score, logreg':<44}{river:>10,.0f}")


if __name__ == "__main__":
    main()
