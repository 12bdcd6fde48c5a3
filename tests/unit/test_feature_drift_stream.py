"""Drift before the labels come, through eddy's own code path (the broker-free harness):
streams where the answer is known."""

from __future__ import annotations

import itertools
import random

import pytest

import eddy
from eddy.streams.ops import sources
from eddy.testing import TestRun

SHIFT_AT = 15_000
LABEL_DELAY = 5_000


def _feature_events(run: TestRun) -> list[dict]:
    return [e["data"] for e in run.events if e["type"] == "eddy.feature_drift.detected"]


def _gaussian_stream(seed: int, n: int, shift_at: int | None):
    rng = random.Random(seed)
    for i in range(n):
        moved = shift_at is not None and i >= shift_at
        x = {
            "amount": rng.gauss(1.0 if moved else 0.0, 1.0),
            "age": rng.gauss(40, 12),
            "channel": rng.choice(("web", "web", "app", "store")),
        }
        yield x, x["age"] > 40


def test_a_feature_shift_is_reported_before_any_label_from_after_it_arrives():
    app = eddy.App()
    app.stream("default", model="hoeffding")
    run = TestRun(app)
    pending: list[tuple[str, bool]] = []
    first_post_shift_label_at = None
    reported_at = None
    for i, (x, y) in enumerate(_gaussian_stream(1, 30_000, SHIFT_AT)):
        run.sample(str(i), x)
        pending.append((str(i), y))
        if len(pending) > LABEL_DELAY:  # each label comes 5,000 samples after its sample
            label_id, label = pending.pop(0)
            if int(label_id) >= SHIFT_AT and first_post_shift_label_at is None:
                first_post_shift_label_at = i
            run.label(label_id, label)
        if i % 250 == 0:
            run.process()
            if reported_at is None and _feature_events(run):
                reported_at = i
    run.process()
    events = _feature_events(run)
    moved = [f for e in events for f in e["findings"] if f["kind"] != "prediction"]
    assert {f["feature"] for f in moved} == {"amount"}, events
    first = next(e for e in events if any(f["feature"] == "amount" for f in e["findings"]))
    position = first["position"]["offset"]  # the sample that completed the detecting window
    assert SHIFT_AT < position <= SHIFT_AT + 2_000, position
    assert (
        reported_at is not None
        and reported_at < first_post_shift_label_at == SHIFT_AT + LABEL_DELAY
    )
    finding = next(f for f in first["findings"] if f["feature"] == "amount")
    assert finding["test"] == "ks" and finding["p_value"] < 1e-6
    assert finding["reference_size"] == finding["recent_size"] == 1000


@pytest.mark.parametrize("seed", [11, 12, 13])
def test_no_feature_drift_event_over_100000_stationary_samples(seed):
    app = eddy.App()
    app.stream("default", model="logreg")
    run = TestRun(app)
    for i, (x, y) in enumerate(itertools.islice(sources.open_named("sea", seed=seed), 100_000)):
        run.sample(str(i), x, label=y)
        if i % 5000 == 0:
            run.process()
    run.process()
    events = _feature_events(run)
    features = [f for e in events for f in e["findings"] if f["kind"] != "prediction"]
    assert features == [], events
    assert run.learner().learned == 100_000


def test_a_concept_drift_that_leaves_the_features_unchanged_moves_no_feature():
    """SEA's change of concept (variant 0 to 3) changes the labels, not the features: no
    feature drift; the error drift fires when the labels come."""
    app = eddy.App()
    app.stream("default", model="scaled-logreg")
    run = TestRun(app)
    stream = sources.open_named("sea", seed=5, variant=0, drift_at=20_000, drift_to=3)
    pending = []
    for i, (x, y) in enumerate(itertools.islice(stream, 40_000)):
        run.sample(str(i), x)
        pending.append((str(i), y))
        if len(pending) > 500:
            run.label(*pending.pop(0))
        if i % 2000 == 0:
            run.process()
    for item in pending:
        run.label(*item)
    run.process()
    events = _feature_events(run)
    features = [f for e in events for f in e["findings"] if f["kind"] != "prediction"]
    assert features == [], events
    drifts = [
        e["data"]["position"]["sample_count"]
        for e in run.events
        if e["type"] == "eddy.drift.detected" and e["data"]["level"] == "drift"
    ]
    assert any(20_000 < d < 22_500 for d in drifts), drifts


def test_a_feature_drift_asks_for_a_retrain_only_when_the_stream_says_so():
    for retrain in (False, True):
        app = eddy.App()
        app.stream("default", model="hoeffding", feature_drift_retrain=retrain)
        run = TestRun(app)
        for i, (x, y) in enumerate(_gaussian_stream(2, 20_000, 10_000)):
            run.sample(str(i), x, label=y)
        run.process()
        assert _feature_events(run)
        requests = [e["data"] for e in run.events if e["type"] == "eddy.retrain.requested"]
        assert [r["reason"] for r in requests if r["reason"] == "feature_drift"] == (
            ["feature_drift"] if retrain else []
        )
