"""Event time: the merge orders a partition's inputs by the events' own ``ts`` (River's
rule at equal times), whatever order or fetch split they arrive in; late data is
counted and processed where it stands. No broker: the merger alone and the harness."""

from __future__ import annotations

import itertools
import random
import time

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st
from river import datasets, evaluate, linear_model, metrics, preprocessing
from river import stream as river_stream
from river.datasets import synth

import eddy
from eddy.streams.engine.merge import LABEL, SAMPLE, InputMerger, Timed
from eddy.streams.records import Record
from eddy.testing import TestRun

BASE = 1_700_000_000_000


def _app(model, task: str) -> eddy.App:
    app = eddy.App()
    app.stream("default", model=model, task=task, feature_drift=False)
    return app


def _qa_events(dataset, delay: int, stamp: str):
    """simulate_qa's events as (topic, id, x or y, ts). ``stamp``: "position" (each event
    one ms after the one before) or "river" (sample i at i, its label at i + delay:
    River's own clock, where a label due at t ties with the sample at t)."""
    out = []
    for position, (i, x, y) in enumerate(river_stream.simulate_qa(dataset, None, delay)):
        river_time = i + (delay if y is not None else 0)
        ts = BASE + (position if stamp == "position" else river_time)
        out.append(("samples" if y is None else "labels", str(i), x if y is None else y, ts))
    return out


def _send(run: TestRun, events) -> None:
    for topic, i, value, ts in events:
        if topic == "samples":
            run.sample(i, {str(k): v for k, v in value.items()}, ts=ts)
        else:
            run.label(i, value, ts=ts)


def _river_predictions(dataset, model, delay: int):
    preds = {}
    for i, x, y in river_stream.simulate_qa(dataset, None, delay):
        if y is None:
            preds[str(i)] = model.predict_one(x)
        else:
            model.learn_one(x, y)
    return preds


CASES = [
    (
        "sea",
        lambda: itertools.islice(synth.SEA(variant=1, seed=11), 3000),
        lambda: preprocessing.StandardScaler() | linear_model.LogisticRegression(),
        "binary",
        "accuracy",
        metrics.Accuracy,
    ),
    (
        "image-segments",
        lambda: itertools.islice(datasets.ImageSegments(), 1500),
        lambda: preprocessing.StandardScaler() | linear_model.SoftmaxRegression(),
        "multiclass",
        "accuracy",
        metrics.Accuracy,
    ),
    (
        "friedman",
        lambda: itertools.islice(synth.Friedman(seed=7), 2000),
        lambda: preprocessing.StandardScaler() | linear_model.LinearRegression(),
        "regression",
        "mae",
        metrics.MAE,
    ),
]


@pytest.mark.parametrize("stamp", ["position", "river"])
@pytest.mark.parametrize("delay", [0, 37, 500])
@pytest.mark.parametrize(
    ("dataset", "model", "task", "metric", "river_metric"),
    [c[1:] for c in CASES],
    ids=[c[0] for c in CASES],
)
def test_samples_first_labels_after_still_give_rivers_figures(
    dataset, model, task, metric, river_metric, delay, stamp
):
    """Every sample is sent before any label (as a consumer sees two topics when one
    fetch holds thousands of samples): ordered by their ts, eddy is River's
    ``progressive_val_score(delay=d)``, prediction by prediction."""
    events = _qa_events(dataset(), delay, stamp)
    run = TestRun(_app(model(), task))
    _send(run, [e for e in events if e[0] == "samples"] + [e for e in events if e[0] == "labels"])
    run.process()
    learner = run.learner()
    river = evaluate.progressive_val_score(dataset(), model(), river_metric(), delay=delay)
    assert learner.learned == sum(1 for _ in dataset())
    assert learner.metrics.cumulative.get(metric).get() == pytest.approx(river.get(), abs=1e-9)
    expected = _river_predictions(dataset(), model(), delay)
    assert {p["id"]: p["prediction"] for p in run.predictions} == expected
    assert run.counts().get("late:labels", 0) == run.counts().get("out_of_order:labels", 0) == 0


def _merge_all(items_by_topic, order):
    merger = InputMerger(order)
    for topic, items in items_by_topic.items():
        merger.add(topic, items)
    return merger.take(lambda topic, since: True)


_times = st.lists(st.integers(0, 40), max_size=30)


@settings(max_examples=200, deadline=None)
@given(samples=_times, labels=_times, seed=st.integers(0, 2**32 - 1))
def test_the_order_does_not_depend_on_how_fetches_split_the_topics(samples, labels, seed):
    """Chunks of random sizes, added in a random interleaving, with takes in between that
    see only what was fetched so far: the records come out in the same order as from
    one merge of everything (event times may go backwards within a topic)."""
    order = ["labels", "samples"]
    items = {
        "samples": [Timed(t, SAMPLE, o, ("s", o), None) for o, t in enumerate(samples)],
        "labels": [Timed(t, LABEL, o, ("l", o), None) for o, t in enumerate(labels)],
    }
    expected = [t.record for t in _merge_all(items, order)]
    rng = random.Random(seed)
    chunks = {}
    for topic, its in items.items():
        cuts, at = [], 0
        while at < len(its):
            n = rng.randint(1, 7)
            cuts.append(its[at : at + n])
            at += n
        chunks[topic] = cuts
    sent = {topic: 0 for topic in order}
    merger = InputMerger(order, max_wait_s=3600)
    got = []
    while any(sent[t] < len(chunks[t]) for t in order):
        topic = rng.choice([t for t in order if sent[t] < len(chunks[t])])
        merger.add(topic, chunks[topic][sent[topic]], fetched_at=float(len(got)))
        sent[topic] += 1
        got += [t.record for t in merger.take(lambda t, since: sent[t] == len(chunks[t]))]
    got += [t.record for t in merger.take(lambda t, since: True)]
    assert got == expected


def test_labels_due_at_a_time_go_before_the_sample_at_that_time():
    merged = _merge_all(
        {
            "samples": [Timed(5, SAMPLE, 0, "s5", None), Timed(6, SAMPLE, 1, "s6", None)],
            "labels": [Timed(5, LABEL, 0, "l5", None), Timed(5, LABEL, 1, "l5b", None)],
        },
        ["labels", "samples"],
    )
    assert [t.record for t in merged] == ["l5", "l5b", "s5", "s6"]


def test_an_input_that_may_hold_earlier_records_is_waited_for_at_most_the_bound():
    merger = InputMerger(["labels", "samples"], max_wait_s=0.2)
    merger.add("samples", [Timed(9, SAMPLE, 0, "s", None)], fetched_at=10.0)
    # The labels were caught up, but as of a fetch older than the one that brought s.
    assert merger.take(lambda topic, since: topic == "labels" and since <= 5.0) == []
    assert merger.take(lambda topic, since: topic == "labels" and since <= 10.0)[0].record == "s"
    merger.add("samples", [Timed(10, SAMPLE, 1, "s2", None)], fetched_at=11.0)
    assert merger.take(lambda topic, since: False) == []
    deadline = time.monotonic() + 5
    released = []
    while not released and time.monotonic() < deadline:
        released = merger.take(lambda topic, since: False)
    assert [t.record for t in released] == ["s2"]


def test_a_record_read_live_waits_for_a_fetch_of_the_other_inputs_after_the_grace():
    """The grace covers what a producer sent before a record but had not yet put on the
    broker: a fetch of the labels at or after ``sent + grace`` vouches for them, an
    earlier one does not."""
    merger = InputMerger(["labels", "samples"], max_wait_s=60, grace_ms=10)
    merger.add("samples", [Timed(9, SAMPLE, 0, "s", None, sent=100.0)], fetched_at=103.0)
    asked: list[float] = []

    def labels_caught_up_at(polled: float):
        return lambda topic, since: asked.append(since) or (topic == "labels" and polled >= since)

    assert merger.take(labels_caught_up_at(105.0)) == []
    assert asked[-1] == 110.0  # sent + grace, later than the fetch that brought s
    assert [t.record for t in merger.take(labels_caught_up_at(110.0))] == ["s"]


def test_a_producer_clock_ahead_does_not_hold_a_record_back():
    """A record stamped in the future (a producer whose clock runs ahead, no ts in the
    event) counts as sent now: the merge does not wait for that time to come."""
    run = TestRun(_app(linear_model.LogisticRegression(), "binary"))
    ahead = int(time.time() * 1000) + 10 * 365 * 86_400_000
    value = b'{"id": "a", "features": {"x": 1.0}}'
    record = Record(run.topics.samples, 0, 0, ahead, b"a", value)
    [timed] = run.units[0].timed(run.topics.samples, [record])
    assert timed.sent <= time.time() * 1000
    assert abs(timed.time - time.time() * 1000) < 60_000  # its event time: now, not ahead
    merger = InputMerger(["labels", "samples"], max_wait_s=60, grace_ms=10)
    merger.add("samples", [timed], fetched_at=time.time() * 1000)
    now = time.time() * 1000 + 20  # labels caught up as of a fetch 20 ms from now
    assert [t.record for t in merger.take(lambda topic, since: since <= now)] == [record]


def test_late_and_out_of_order_events_are_counted_and_processed_where_they_stand():
    """The documented rule: a record is never held back or dropped for its time. One
    whose ts is below its topic's newest is out_of_order; one below what the merge
    already released from the other input is late; both are processed at once, with
    the model as it is then, and counted (eddy_late_events_total)."""
    run = TestRun(_app(linear_model.LogisticRegression(), "binary"))
    run.sample("a", {"x": 1.0}, ts=BASE + 10)
    run.label("a", True, ts=BASE + 20)
    run.process()
    # The merge has passed BASE + 20 (a's label): a sample stamped before that, and a
    # label whose ts goes back below the labels' newest.
    run.sample("c", {"x": 2.0}, ts=BASE + 15)
    run.label("c", True, ts=BASE + 12)
    run.process()
    counts = run.counts()
    assert counts["late:samples"] == 1
    assert counts["out_of_order:labels"] == 1
    assert run.learner().learned == 2  # nothing dropped
    by_id = {p["id"]: p for p in run.predictions}
    assert by_id["c"]["model_examples"] == 1  # predicted with the model as it was then
    for kind, topic in (("late", "samples"), ("out_of_order", "labels")):
        value = run.registry.get_sample_value(
            "eddy_late_events_total", {"topic": topic, "kind": kind}
        )
        assert value == 1.0


def test_events_without_ts_are_ordered_by_their_record_timestamps():
    run = TestRun(_app(linear_model.LogisticRegression(), "binary"))
    run.send(run.topics.samples, b'{"id": "a", "features": {"x": 1.0}}', b"a", ts=BASE + 10)
    run.send(run.topics.samples, b'{"id": "b", "features": {"x": 1.0}}', b"b", ts=BASE + 30)
    run.send(run.topics.labels, b'{"id": "a", "label": true}', b"a", ts=BASE + 20)
    run.process()
    by_id = {p["id"]: p for p in run.predictions}
    assert by_id["a"]["model_examples"] == 0
    assert by_id["b"]["model_examples"] == 1  # a's label (at 20) came before b (at 30)
