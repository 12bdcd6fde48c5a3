"""eddy's benchmark suite: every figure beside its baseline, measured in the same run.

Run ``make bench`` (or ``.venv/bin/python bench/run.py [--n 100000] [--quick]``). It
starts one embedded broker and prints a table of ratios against the targets, and
writes the same as JSON to ``bench/results/latest.json``.

Sections: ingest (raw aiokafka read + decode vs the worker end to end, per model);
learning (River's in-process ``progressive_val_score`` vs the worker, same model and
stream); latency at a fixed offered rate; maintenance (retrain request → exported
int8 model for a window of examples); export (fp32 vs int8); memory.
"""

from __future__ import annotations

import argparse
import asyncio
import itertools
import json
import platform
import resource
import shutil
import sys
import tempfile
import time
import tracemalloc
import uuid
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import numpy as np
import orjson

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from bench.worker_rate import raw_rate, worker_rate
from eddy.consumers.exporter import Exporter
from eddy.consumers.retrainer import Retrainer, registry_of
from eddy.consumers.service import run_consumer
from eddy.models.join import JoinBuffer, Pending
from eddy.models.prequential import StreamLearner
from eddy.streams import sources
from eddy.streams.broker import EmbeddedBroker
from eddy.streams.codec import decode_event, make_event
from eddy.streams.kafka import read_records, start_producer
from eddy.streams.producer import ProduceOptions, produce
from eddy.streams.settings import Settings
from eddy.streams.supervisor import eddy_argv
from eddy.streams.topics import Topics, create_topics
from eddy.streams.worker import Worker, learner_config, run_worker

RIVER_MODELS = {"logreg": "LogisticRegression", "hoeffding": "HoeffdingTreeClassifier"}


def fresh(broker: EmbeddedBroker, data_dir: str, **overrides: Any) -> Settings:
    """Settings on new topics, created."""
    settings = Settings(
        bootstrap=broker.bootstrap,
        topic_prefix=f"b{uuid.uuid4().hex[:6]}.",
        partitions=1,
        data_dir=data_dir,
        producer_idempotence="off",
        **overrides,
    )
    asyncio.run(create_topics(settings.kafka, settings.topics))
    return settings


def river_rate(model: str, n: int) -> float:
    from river import evaluate, linear_model, metrics, tree

    make = {"logreg": linear_model.LogisticRegression, "hoeffding": tree.HoeffdingTreeClassifier}
    data = list(itertools.islice(sources.open_named("sea", seed=1), n))
    started = time.perf_counter()
    evaluate.progressive_val_score(data, make[model](), metrics.Accuracy())
    return n / (time.perf_counter() - started)


def learning_rate(settings: Settings, n: int) -> float:
    """eddy's learning step alone, in process, on decoded examples: no Kafka, no codec.

    The same work per example as the worker's (predict, learn, prequential metrics,
    drift detection), in the worker's batch sizes; the ceiling of its end-to-end rate.
    """
    data = list(itertools.islice(sources.open_named("sea", seed=1), n))
    learner = StreamLearner("default", learner_config(settings))
    size = 5000 if learner.learner.per_example else settings.learning.batch_size
    started = time.perf_counter()
    for i in range(0, n, size):
        chunk = data[i : i + size]
        learner.process([x for x, _ in chunk], [y for _, y in chunk])
    return n / (time.perf_counter() - started)


def ingest(broker: EmbeddedBroker, data_dir: str, n: int) -> list[dict[str, Any]]:
    rows = []
    for model in ("torch-linear", "logreg", "hoeffding"):
        settings = fresh(broker, data_dir, model=model)
        asyncio.run(
            produce(
                settings, sources.open_named("sea", seed=1), ProduceOptions(n=n, inline_labels=True)
            )
        )
        raw = asyncio.run(raw_rate(settings, Topics(settings.topics.prefix).samples, n))
        eddy = asyncio.run(worker_rate(settings, n))
        learn = learning_rate(settings, min(n, 50_000))
        row = {
            "model": model,
            "raw_per_s": raw,
            "eddy_per_s": eddy,
            "eddy_vs_raw": eddy / raw,
            "learn_only_per_s": learn,
            "eddy_vs_learn_only": eddy / learn,
        }
        if model in RIVER_MODELS:
            row["river_per_s"] = river_rate(model, min(n, 50_000))
            row["eddy_vs_river"] = eddy / row["river_per_s"]
        rows.append(row)
    return rows


async def _latency(settings: Settings, n: int, rate: float) -> dict[str, float]:
    started: asyncio.Future[Worker] = asyncio.get_running_loop().create_future()
    task = asyncio.create_task(run_worker(settings, on_start=started))
    worker = await started
    await asyncio.sleep(0)
    while not worker.learner.ready.is_set() or not worker.join.ready.is_set():
        await asyncio.sleep(0.05)
    # The producer is another process, as it is in production: in this one it would
    # take turns with the worker on one event loop and add its own pauses.
    producer = await asyncio.create_subprocess_exec(
        *eddy_argv(
            "produce",
            "--dataset",
            "sea",
            "--seed",
            "2",
            "--n",
            str(n),
            "--rate",
            str(rate),
            "--no-progress",
            "--bootstrap",
            settings.kafka.bootstrap or "",
            "--topic-prefix",
            settings.topics.prefix,
            "--partitions",
            str(settings.topics.partitions),
            "--producer-idempotence",
            "off",
        ),
        stdout=asyncio.subprocess.DEVNULL,
    )
    if await producer.wait() != 0:
        msg = f"eddy produce exited with code {producer.returncode}"
        raise RuntimeError(msg)
    while (s := worker.learner.stream("default")) is None or s.learned < n:
        await asyncio.sleep(0.05)
    worker.stop()
    await task
    topics = Topics(settings.topics.prefix)
    samples = {
        orjson.loads(r.value)["id"]: r.timestamp
        for r in await read_records(settings, topics.samples)
    }
    labels = {
        orjson.loads(r.value)["id"]: r.timestamp
        for r in await read_records(settings, topics.labels)
    }
    predictions = await read_records(settings, topics.predictions)
    to_prediction, to_learned = [], []
    for r in predictions:
        p = orjson.loads(r.value)
        to_prediction.append(p["ts"] - samples[p["id"]])
        to_learned.append(p["ts"] - labels[p["id"]])
    q = np.percentile
    return {
        "offered_per_s": rate,
        "sample_to_prediction_p50_ms": float(q(to_prediction, 50)),
        "sample_to_prediction_p99_ms": float(q(to_prediction, 99)),
        "label_to_learned_p50_ms": float(q(to_learned, 50)),
        "label_to_learned_p99_ms": float(q(to_learned, 99)),
    }


async def _maintenance(settings: Settings, window: int) -> dict[str, Any]:
    # The worker's own drift events would ask for a post-drift window still to come;
    # this measures one request over a window that is already in Kafka.
    stream = sources.open_named("sea", seed=3, variant=0, drift_at=window // 2, drift_to=3)
    await produce(
        settings.kafka, settings.topics.prefix, stream, ProduceOptions(n=window, inline_labels=True)
    )
    started: asyncio.Future[Worker] = asyncio.get_running_loop().create_future()
    task = asyncio.create_task(run_worker(settings, on_start=started))
    worker = await started
    while (s := worker.learner.stream("default")) is None or s.learned < window:
        await asyncio.sleep(0.1)
    worker.stop()
    await task
    consumers = []
    for kind in (Retrainer, Exporter):
        ready: asyncio.Future[Any] = asyncio.get_running_loop().create_future()
        consumers.append(
            (asyncio.create_task(run_consumer(settings, kind, on_start=ready)), await ready)
        )
    # Running services, as in production: not the seconds a consumer group takes to form.
    for _, consumer in consumers:
        await consumer.ready.wait()
    topics = Topics(settings.topics.prefix)
    request = make_event(
        "retrain.requested",
        "eddy/bench",
        {
            "stream": "default",
            "reason": "manual",
            "window": {
                "offsets": [{"topic": topics.examples, "partition": 0, "start": 0, "end": window}]
            },
        },
        subject="default",
    )
    producer = await start_producer(settings)
    sent = time.time()
    await producer.send_and_wait(topics.events, orjson.dumps(request))
    await producer.stop()
    # Wait on the exporter itself: polling the topic with a new consumer each time
    # took the GIL from the exporter's fp32/int8 timing thread.
    exporter, deadline = consumers[1][1], time.monotonic() + 600
    while exporter.handled < 1:
        if time.monotonic() > deadline:
            msg = "no model.exported within 10 minutes of the retrain request"
            raise RuntimeError(msg)
        await asyncio.sleep(0.2)
    exported = next(
        e
        for e in (decode_event(r.value) for r in await read_records(settings, topics.events))
        if e.type == "model.exported"
    )
    seconds = datetime.fromisoformat(exported.time.replace("Z", "+00:00")).timestamp() - sent
    for task, consumer in consumers:
        consumer.stop()
        await task
    card = registry_of(settings).get("default", exported.data["version"]).card
    return {
        "window": window,
        "request_to_exported_s": seconds,
        "retrain_s": card["seconds"],
        "export_s": card["quantization"]["seconds"],
        "quantization": card["quantization"],
    }


def join_memory(samples: int, cap: int) -> dict[str, Any]:
    buffer = JoinBuffer(ttl_ms=10**12, max_pending=cap)
    tracemalloc.start()
    for i in range(samples):
        buffer.add_sample(Pending(f"id-{i:09d}", {"x": float(i)}, (0, i), i))
    _, peak = tracemalloc.get_traced_memory()
    tracemalloc.stop()
    return {"unmatched_samples": samples, "cap": cap, "pending": len(buffer), "peak_bytes": peak}


TARGETS = [
    ("ingest torch-linear eddy/raw", lambda r: r["ingest"][0]["eddy_vs_raw"], ">=", 0.5),
    ("learning logreg eddy/River", lambda r: r["ingest"][1]["eddy_vs_river"], ">=", 0.75),
    ("learning hoeffding eddy/River", lambda r: r["ingest"][2]["eddy_vs_river"], ">=", 0.75),
    (
        "p99 sample->prediction ms @5k/s",
        lambda r: r["latency"]["sample_to_prediction_p99_ms"],
        "<=",
        50,
    ),
    ("request->exported s (window)", lambda r: r["maintenance"]["request_to_exported_s"], "<=", 30),
    ("int8 size ratio", lambda r: r["maintenance"]["quantization"]["size_ratio"], ">=", 3.5),
    (
        "int8/fp32 batch-1 latency",
        lambda r: (
            r["maintenance"]["quantization"]["int8_batch1_us"]
            / r["maintenance"]["quantization"]["fp32_batch1_us"]
        ),
        "<=",
        1.0,
    ),
    (
        "int8/fp32 batch-256 throughput",
        lambda r: (
            r["maintenance"]["quantization"]["int8_batch256_per_s"]
            / r["maintenance"]["quantization"]["fp32_batch256_per_s"]
        ),
        ">=",
        1.3,
    ),
    (
        "int8 accuracy delta (points)",
        lambda r: abs(r["maintenance"]["quantization"]["accuracy_delta"]) * 100,
        "<=",
        0.5,
    ),
]


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--n", type=int, default=100_000, help="events per ingest run")
    parser.add_argument("--window", type=int, default=50_000, help="examples per retrain window")
    parser.add_argument("--quick", action="store_true", help="small sizes, for a smoke run")
    args = parser.parse_args()
    if args.quick:
        args.n, args.window = 10_000, 5_000
    data_dir = tempfile.mkdtemp(prefix="eddy-bench-")
    results: dict[str, Any] = {
        "date": datetime.now(UTC).isoformat(timespec="seconds"),
        "machine": f"{platform.machine()}, {platform.processor() or 'cpu'}, "
        f"{__import__('os').cpu_count()} cores, Python {platform.python_version()}",
    }
    try:
        with EmbeddedBroker() as broker:
            results["ingest"] = ingest(broker, data_dir, args.n)
            results["latency"] = asyncio.run(
                _latency(fresh(broker, data_dir), min(args.n, 50_000), 5000)
            )
            no_drift = fresh(broker, data_dir, drift_min_examples=10**9)
            results["maintenance"] = asyncio.run(_maintenance(no_drift, args.window))
        results["join_memory"] = join_memory(1_000_000, 100_000)
        results["peak_rss_bytes"] = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024
    finally:
        shutil.rmtree(data_dir, ignore_errors=True)
    report(results)
    out = Path(__file__).parent / "results"
    out.mkdir(exist_ok=True)
    (out / "latest.json").write_text(json.dumps(results, indent=2))


def report(r: dict[str, Any]) -> None:
    print(f"eddy bench, {r['date']}, {r['machine']}")
    print(
        f"\n{'ingest (1 partition, labels inline)':<36}{'raw/s':>9}{'eddy/s':>9}{'ratio':>7}"
        f"{'learn/s':>9}{'ratio':>7}{'River/s':>9}{'ratio':>7}"
    )
    for row in r["ingest"]:
        river = (
            f"{row['river_per_s']:>9,.0f}{row['eddy_vs_river']:>7.1%}"
            if "river_per_s" in row
            else ""
        )
        print(
            f"{row['model']:<36}{row['raw_per_s']:>9,.0f}{row['eddy_per_s']:>9,.0f}"
            f"{row['eddy_vs_raw']:>7.1%}{row['learn_only_per_s']:>9,.0f}"
            f"{row['eddy_vs_learn_only']:>7.1%}{river}"
        )
    print(
        "  raw: aiokafka read + orjson decode; learn: eddy's learning step in process, no "
        "Kafka;\n  River: progressive_val_score (predict, learn, accuracy) in process"
    )
    lat = r["latency"]
    print(
        f"\nlatency at {lat['offered_per_s']:,.0f}/s offered: sample->prediction p50 "
        f"{lat['sample_to_prediction_p50_ms']:.0f} ms, p99 {lat['sample_to_prediction_p99_ms']:.0f} ms; "
        f"label->learned p50 {lat['label_to_learned_p50_ms']:.0f} ms, p99 {lat['label_to_learned_p99_ms']:.0f} ms"
    )
    m, q = r["maintenance"], r["maintenance"]["quantization"]
    print(
        f"maintenance: {m['window']:,}-example window, request->exported {m['request_to_exported_s']:.1f} s "
        f"(retrain {m['retrain_s']:.1f} s, export {m['export_s']:.1f} s)"
    )
    print(
        f"export: fp32 {q['fp32_bytes']:,} B, int8 {q['int8_bytes']:,} B ({q['size_ratio']:.2f}x); batch 1 "
        f"{q['fp32_batch1_us']:.1f} vs {q['int8_batch1_us']:.1f} us; batch 256 {q['fp32_batch256_per_s']:,.0f} "
        f"vs {q['int8_batch256_per_s']:,.0f}/s; accuracy {q['fp32_accuracy']:.4f} vs {q['int8_accuracy']:.4f}"
    )
    j = r["join_memory"]
    print(
        f"memory: peak RSS {r['peak_rss_bytes'] / 2**20:,.0f} MiB (whole bench process); join pending "
        f"{j['pending']:,} after {j['unmatched_samples']:,} unmatched samples (cap {j['cap']:,}), "
        f"peak traced {j['peak_bytes'] / 2**20:,.1f} MiB"
    )
    print(f"\n{'target':<36}{'measured':>12}  {'goal':<10}result")
    for name, get, op, goal in TARGETS:
        value = get(r)
        ok = value >= goal if op == ">=" else value <= goal
        print(f"{name:<36}{value:>12.3f}  {op} {goal:<7}{'met' if ok else 'MISSED'}")


if __name__ == "__main__":
    main()
