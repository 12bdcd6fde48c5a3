"""eddy's per-partition engine alone, no Kafka: microseconds per event beside the
hand-written loop over the same records, in one process.

``python bench/engine.py [--n 30000] [--model logreg] [--apart] [--profile]``

The records are built in memory (SEA samples with inline labels, or with ``--apart``
each label on its own topic right behind its sample) and handed to one
:class:`~eddy.streams.engine.unit.Unit` in batches of 5,000, as the worker hands a fetch;
what the engine would produce is dropped. Timed after ``gc.collect(); gc.freeze()``, as
``eddy worker`` runs. ``--profile`` prints cProfile's top functions of the engine run.
This is where engine levers are measured before the end-to-end figures of ``run.py``.
"""

from __future__ import annotations

import argparse
import cProfile
import gc
import itertools
import pstats
import sys
import time
from pathlib import Path
from typing import Any

import orjson

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from bench.baselines import river_model
from eddy.streams.app import App
from eddy.streams.engine.merge import InputMerger
from eddy.streams.ops import sources
from eddy.streams.settings import Settings
from eddy.streams.wire.codec import Label, Sample, encode_label, encode_sample
from eddy.testing import Record, TestRun

BATCH = 5000


def records(run: TestRun, n: int, apart: bool) -> list[Record]:
    """SEA events as the worker would read them from one partition."""
    out = []
    data = itertools.islice(sources.open_named("sea", seed=1), n)
    t0 = 1_700_000_000_000
    for i, (x, y) in enumerate(data):
        features = {str(k): v for k, v in x.items()}
        key = str(i).encode()
        if apart:
            sample = encode_sample(Sample(str(i), features, None, None, "default"))
            out.append(Record(run.topics.samples, 0, i, t0 + 2 * i, key, sample))
            label = encode_label(Label(str(i), y))
            out.append(Record(run.topics.labels, 0, i, t0 + 2 * i + 1, key, label))
        else:
            sample = encode_sample(Sample(str(i), features, None, y, "default"))
            out.append(Record(run.topics.samples, 0, i, t0 + i, key, sample))
    return out


def hand_written(events: list[Record], model_name: str) -> float:
    """The loop a user writes (decode, predict, one metric, learn): seconds."""
    from river import metrics

    model, metric = river_model(model_name), metrics.Accuracy()
    started = time.perf_counter()
    for r in events:
        event = orjson.loads(r.value)  # type: ignore[arg-type]
        x, y = event["features"], event["label"]
        y_pred = model.predict_one(x)
        if y_pred is not None:
            metric.update(y, y_pred)
        model.learn_one(x, y)
    return time.perf_counter() - started


def engine(run: TestRun, events: list[Record], profile: bool) -> tuple[float, Any]:
    """One unit over the records, in fetch-sized batches: seconds (and the profile)."""
    unit = run.units[0]
    profiler = cProfile.Profile() if profile else None
    started = time.perf_counter()
    if profiler is not None:
        profiler.enable()
    merger = InputMerger([run.topics.labels, run.topics.samples, run.topics.repartition])
    for i in range(0, len(events), BATCH):
        batch = events[i : i + BATCH]
        for topic in (run.topics.samples, run.topics.labels):
            merger.add(topic, unit.timed(topic, [r for r in batch if r.topic == topic]))
        unit.process(merger.take(lambda topic, since: True))  # outputs dropped
    if profiler is not None:
        profiler.disable()
    return time.perf_counter() - started, profiler


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--n", type=int, default=30_000, help="events")
    parser.add_argument("--model", default="logreg", choices=["logreg", "hoeffding"])
    parser.add_argument("--apart", action="store_true", help="labels on their own topic")
    parser.add_argument("--profile", action="store_true", help="print the engine's profile")
    args = parser.parse_args()
    settings = Settings.build(model=args.model, partitions=1, metrics_port=0)
    run = TestRun(App(settings=settings))
    events = records(run, args.n, args.apart)
    gc.collect()
    gc.freeze()
    hand = hand_written(records(run, args.n, False), args.model)
    spent, profiler = engine(run, events, args.profile)
    learned = run.learner().learned
    assert learned == args.n, f"learned {learned} of {args.n}"
    labels = "two topics" if args.apart else "labels inline"
    note = " (the profiler inflates the engine's figure)" if profiler is not None else ""
    print(
        f"{args.model}, {labels}, {args.n:,} events: hand-written loop "
        f"{hand / args.n * 1e6:.1f} µs/event, eddy's engine {spent / args.n * 1e6:.1f} "
        f"µs/event, ratio {hand / spent:.3f}{note}"
    )
    if profiler is not None:
        pstats.Stats(profiler).sort_stats("tottime").print_stats(25)


if __name__ == "__main__":
    main()
