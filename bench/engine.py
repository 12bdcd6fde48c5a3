"""eddy's per-partition engine alone, no Kafka: microseconds per event beside the
hand-written loop over the same records, in one process.

``python bench/engine.py [--n 30000] [--model scaled-logreg|logreg|hoeffding] [--apart]
[--profile] [--no-stages]``

The records are built in memory (SEA samples with inline labels, or with ``--apart``
each label on its own topic right behind its sample) and handed to one
:class:`~eddy.streams.engine.unit.Unit` in batches of 5,000, as the worker hands a fetch;
what the engine would produce is dropped. Timed after ``gc.collect(); gc.freeze()``, as
``eddy worker`` runs. A second run times each stage of the engine (decode, merge, the
learner, metrics and detector, records, monitors, the rest) in µs/event beside the
hand-written loop; ``--profile`` prints cProfile's top functions of the first run. This
is where engine levers are measured before the end-to-end figures of ``run.py``.
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


# Where the engine's time goes: (stage, class, method). Each is timed around its calls
# (per batch, or per fetch for decoding); none of them calls another, so the engine's
# total less their sum is the rest (the merge's bookkeeping aside): the join, the queues,
# routing, dead-letter checks and the outputs' lists.
STAGES = [
    ("decode + validate + event time", "eddy.streams.engine.unit:Unit", "timed"),
    ("merge by event time", "eddy.streams.engine.merge:InputMerger", "take"),
    ("learner (compiled kernel, or River)", "eddy.models.learners:RiverLearner", "run"),
    ("metrics + drift detector", "eddy.models.prequential:StreamLearner", "_score"),
    ("prediction records", "eddy.streams.engine.unit:Unit", "_publish_predictions"),
    ("example records, drift events", "eddy.streams.engine.unit:Unit", "_learned"),
    ("feature monitors", "eddy.streams.engine.unit:Unit", "_watch_features"),
]


class Stages:
    """Seconds spent in each stage of :data:`STAGES` while it is installed."""

    def __init__(self) -> None:
        self.spent: dict[str, float] = {}
        self._undo: list[tuple[Any, str, Any]] = []

    def __enter__(self) -> Stages:
        import importlib

        for stage, where, method in STAGES:
            module, _, name = where.partition(":")
            cls = getattr(importlib.import_module(module), name)
            original = cls.__dict__[method]
            self._undo.append((cls, method, original))
            setattr(cls, method, self._timed(stage, original))
        return self

    def __exit__(self, *exc: object) -> None:
        for cls, method, original in reversed(self._undo):
            setattr(cls, method, original)

    def _timed(self, stage: str, fn: Any) -> Any:
        spent = self.spent

        def timed(*args: Any, **kwargs: Any) -> Any:
            started = time.perf_counter()
            try:
                return fn(*args, **kwargs)
            finally:
                spent[stage] = spent.get(stage, 0.0) + time.perf_counter() - started

        return timed


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
    parser.add_argument(
        "--model",
        default="scaled-logreg",
        choices=["scaled-logreg", "logreg", "hoeffding"],
    )
    parser.add_argument("--apart", action="store_true", help="labels on their own topic")
    parser.add_argument("--profile", action="store_true", help="print the engine's profile")
    parser.add_argument(
        "--no-stages", dest="stages", action="store_false", help="skip the per-stage run"
    )
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
    if args.stages:
        print_stages(settings, args.n, args.apart, hand)


def print_stages(settings: Settings, n: int, apart: bool, hand: float | None = None) -> None:
    """Run the engine once more with each stage timed, and print µs/event per stage (and
    the hand-written loop's whole, ``hand`` seconds, if given)."""
    staged = TestRun(App(settings=settings))
    with Stages() as stages:
        total, _ = engine(staged, records(staged, n, apart), False)
    print(f"stages (a run timed around each stage; {total / n * 1e6:.1f} µs/event):")
    for stage, seconds in sorted(stages.spent.items(), key=lambda kv: -kv[1]):
        print(f"  {stage:<44}{seconds / n * 1e6:6.2f} µs/event")
    rest = total - sum(stages.spent.values())
    print(f"  {'the rest (join, queues, routing, outputs)':<44}{rest / n * 1e6:6.2f} µs/event")
    if hand is not None:
        print(f"  {'hand-written loop, whole':<44}{hand / n * 1e6:6.2f} µs/event")


if __name__ == "__main__":
    main()
