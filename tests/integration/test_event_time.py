"""Event time over the embedded broker: samples and labels on their own topics, sent by
a librdkafka producer (many records per millisecond of its send clock), are merged by
the events' ``ts`` and give River's ``progressive_val_score(delay=d)`` prediction by
prediction, read as a backlog or live, whatever the fetch sizes; a kill -9 and a
restore mid-stream give the model an uncrashed run gives."""

from __future__ import annotations

import asyncio
import itertools

import orjson
import pytest
from river import datasets, evaluate, linear_model, metrics, preprocessing
from river import stream as river_stream
from river.datasets import synth

from eddy.models.catalogue import make_learner
from eddy.streams.app import App
from eddy.streams.kafka.admin import create_topics
from eddy.streams.kafka.topics import Topics
from eddy.streams.ops import sources
from eddy.streams.ops.producer import ProduceOptions, produce
from tests.integration.conftest import read_topic
from tests.integration.event_helpers import LIVE_GRACE_MS, named, produce_librdkafka, qa_events
from tests.integration.worker_helpers import learned, running_worker, wait_for

confluent_kafka = pytest.importorskip("confluent_kafka")

DELAYS = (0, 37, 500)


CASES = {
    # name: (dataset, model, task, eddy metric, River metric)
    "sea": (
        named(lambda: itertools.islice(synth.SEA(variant=1, seed=11), 3000)),
        lambda: preprocessing.StandardScaler() | linear_model.LogisticRegression(),
        "binary",
        "accuracy",
        metrics.Accuracy,
    ),
    "segments": (
        lambda: itertools.islice(datasets.ImageSegments(), 1500),
        lambda: preprocessing.StandardScaler() | linear_model.SoftmaxRegression(),
        "multiclass",
        "f1",
        metrics.MacroF1,
    ),
    "friedman": (
        named(lambda: itertools.islice(synth.Friedman(seed=7), 2000)),
        lambda: preprocessing.StandardScaler() | linear_model.LinearRegression(),
        "regression",
        "mae",
        metrics.MAE,
    ),
}
STREAMS = [(f"{name}-d{d}", name, d) for name in CASES for d in DELAYS]


def _events():
    """Every stream's events in one event-time order (what producers of several streams
    write)."""
    out = [e for stream, name, d in STREAMS for e in qa_events(CASES[name][0](), d, stream)]
    out.sort(key=lambda e: e[:2])
    return out


def _app(settings) -> App:
    app = App(settings=settings)
    for stream, name, _ in STREAMS:
        _, model, task, _, _ = CASES[name]
        app.stream(stream, model=model(), task=task, feature_drift=False)
    return app


def _one_partition(settings, suffix: str, **overrides):
    s = settings.with_overrides(
        {"topic_prefix": f"{settings.topics.prefix}{suffix}.", "partitions": 1, **overrides}
    )
    asyncio.run(create_topics(s.kafka, s.topics))
    return s


def _sizes():
    return {stream: sum(1 for _ in CASES[name][0]()) for stream, name, _ in STREAMS}


def _run(settings, events, live: bool):
    """Run a worker over the topics (produced first, or while it runs); return each
    stream's learner and every prediction record (without its wall-clock ``ts``)."""
    sizes = _sizes()

    async def scenario():
        if not live:
            produce_librdkafka(settings, events)
        async with running_worker(settings, _app(settings)) as worker:
            if live:
                await wait_for(lambda: worker.agent.ready.is_set(), 60, "partitions assigned")
                await asyncio.get_running_loop().run_in_executor(
                    None, lambda: produce_librdkafka(settings, events, pause_every=2000)
                )
            for stream, n in sizes.items():
                done = lambda s=stream, n=n: learned(worker, s) >= n  # noqa: E731
                await wait_for(done, 180, f"{stream} learned")
            learners = {stream: worker.stream(stream) for stream in sizes}
            counts = worker.counts()
        records = await read_topic(
            settings, Topics(settings.topics.prefix).predictions, at_least=sum(sizes.values())
        )
        return learners, counts, records

    learners, counts, records = asyncio.run(scenario())
    predictions = []
    for r in records:
        value = orjson.loads(r.value)
        del value["ts"]
        predictions.append(value)
    return learners, counts, predictions


def _river(stream: str):
    """River's own figure and predictions for a stream."""
    _, name, delay = next(s for s in STREAMS if s[0] == stream)
    dataset, model, _, _, river_metric = CASES[name]
    figure = evaluate.progressive_val_score(dataset(), model(), river_metric(), delay=delay).get()
    predictor, predictions = model(), {}
    for i, x, y in river_stream.simulate_qa(dataset(), None, delay):
        if y is None:
            predictions[f"{stream}-{i}"] = predictor.predict_one(x)
        else:
            predictor.learn_one(x, y)
    return figure, predictions


@pytest.fixture(scope="module")
def river_figures():
    return {stream: _river(stream) for stream, _, _ in STREAMS}


def _check_equals_river(learners, counts, predictions, river_figures):
    late = ("late:", "out_of_order:", "dead:")
    assert not {k: v for k, v in counts.items() if k.startswith(late)}
    sizes = _sizes()
    for stream, _, _ in STREAMS:
        figure, expected = river_figures[stream]
        learner = learners[stream]
        metric = CASES[next(s for s in STREAMS if s[0] == stream)[1]][3]
        assert learner.learned == sizes[stream], stream
        value = learner.metrics.cumulative.get(metric).get()
        assert value == pytest.approx(figure, abs=1e-9), stream
        served = {p["id"]: p["prediction"] for p in predictions if p["stream"] == stream}
        assert served == expected, stream


def _by_stream(predictions):
    """Each stream's prediction records in the order they were published (how records
    of different streams interleave on the topic follows the engine's batches)."""
    out: dict[str, list[dict]] = {}
    for p in predictions:
        out.setdefault(p["stream"], []).append(p)
    return out


def test_a_backlog_and_a_live_stream_give_rivers_predictions_and_figures(settings, river_figures):
    events = _events()
    backlog = _run(_one_partition(settings, "backlog"), events, live=False)
    _check_equals_river(*backlog, river_figures)
    live = _run(_one_partition(settings, "live", merge_grace_ms=LIVE_GRACE_MS), events, live=True)
    _check_equals_river(*live, river_figures)
    assert _by_stream(live[2]) == _by_stream(backlog[2])


def test_fetch_sizes_change_nothing(settings, river_figures):
    """The same topics read with tiny fetches and with mid-sized odd ones give identical
    records, River's (the default, large fetch is the backlog run of the test above)."""
    events = _events()
    runs = []
    for suffix, records, partition_bytes in (
        ("f7", 7, 4096),
        ("f1009", 1009, 262_144),
    ):
        s = _one_partition(
            settings,
            suffix,
            fetch_max_records=records,
            fetch_partition_bytes=partition_bytes,
        )
        runs.append(_run(s, events, live=False))
    _check_equals_river(*runs[0], river_figures)
    assert _by_stream(runs[0][2]) == _by_stream(runs[1][2])


def test_eddy_produce_from_a_file_gives_rivers_predictions(settings, tmp_path):
    """``eddy produce --file sea.jsonl --target y`` (each label right after its sample,
    both stamped by the producer's clock, many per millisecond), then a worker with
    ``scaled-logreg``: every prediction is River's ``predict_one`` in test-then-train
    order, and the accuracy is River's ``progressive_val_score``."""
    settings = _one_partition(settings, "file", model="scaled-logreg")
    rows = list(named(lambda: itertools.islice(synth.SEA(variant=1, seed=11), 5000))())
    path = tmp_path / "sea.jsonl"
    path.write_bytes(b"".join(orjson.dumps(x | {"y": y}) + b"\n" for x, y in rows))

    async def scenario():
        report = await produce(
            settings.kafka,
            settings.topics.prefix,
            sources.open_file(path, "y"),
            ProduceOptions(id_prefix="f"),
        )
        async with running_worker(settings) as worker:
            await wait_for(lambda: learned(worker) >= len(rows), 120, "every row learned")
            learner = worker.stream("default")
        records = await read_topic(
            settings, Topics(settings.topics.prefix).predictions, at_least=len(rows)
        )
        return report, learner, records

    report, learner, records = asyncio.run(scenario())
    assert report.samples == report.labels == len(rows)
    river_model = make_learner("scaled-logreg", "binary").estimator  # type: ignore[attr-defined]
    expected = {}
    for i, (x, y) in enumerate(rows):
        expected[f"f-{i:09d}"] = river_model.predict_one(x)
        river_model.learn_one(x, y)
    served = {v["id"]: v["prediction"] for v in (orjson.loads(r.value) for r in records)}
    assert served == expected
    river = evaluate.progressive_val_score(
        rows, make_learner("scaled-logreg", "binary").estimator, metrics.Accuracy()
    )
    assert learner.metrics.cumulative.get("accuracy").get() == pytest.approx(river.get(), abs=1e-9)
