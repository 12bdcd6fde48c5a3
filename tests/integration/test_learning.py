"""The online-learning core against the embedded broker: the issue's done-when tests."""

from __future__ import annotations

import asyncio
import itertools
from collections import Counter

import pytest
from river import evaluate, linear_model, metrics

from eddy.streams import sources
from eddy.streams.codec import decode_event
from eddy.streams.producer import ProduceOptions, produce
from eddy.streams.topics import Topics, create_topics
from tests.integration.conftest import read_topic
from tests.integration.worker_helpers import running_worker, wait_for


def _one_partition(settings, **overrides):
    s = settings.with_overrides(
        {"topic_prefix": settings.topics.prefix + "p1.", "partitions": 1, **overrides}
    )
    asyncio.run(create_topics(s.kafka, s.topics))
    return s


async def _learn(settings, examples, options, n):
    await produce(settings.kafka, settings.topics.prefix, examples, options)
    async with running_worker(settings) as worker:
        await wait_for(
            lambda: (s := worker.learner.stream("default")) is not None and s.learned >= n,
            120,
            f"{n} examples learned",
        )
        return worker.learner.stream("default")


@pytest.mark.parametrize(
    ("model", "task", "source", "river_model", "metric", "n"),
    [
        ("logreg", "binary", "sea", linear_model.LogisticRegression, metrics.Accuracy, 20_000),
        (
            "linreg",
            "regression",
            "trump_approval",
            linear_model.LinearRegression,
            metrics.MAE,
            1001,
        ),
    ],
)
def test_prequential_metric_equals_rivers_progressive_val_score(
    settings, model, task, source, river_model, metric, n
):
    settings = _one_partition(settings, model=model, task=task)

    def stream():
        return itertools.islice(sources.open_named(source, seed=11), n)

    learned = asyncio.run(_learn(settings, stream(), ProduceOptions(n=n, label_delay=0), n))
    ours = learned.metrics.cumulative.get("accuracy" if task == "binary" else "mae").get()
    river = evaluate.progressive_val_score(stream(), river_model(), metric()).get()
    assert learned.learned == n
    assert ours == pytest.approx(river, abs=1e-9)


def test_late_and_missing_labels_are_learned_or_counted_as_expired(settings):
    settings = settings.with_overrides({"join_ttl_s": 2.0})
    n = 20_000
    options = ProduceOptions(n=n, label_delay=500, label_drop=0.01, seed=5)

    async def scenario():
        report = await produce(
            settings.kafka, settings.topics.prefix, sources.open_named("sea", seed=5), options
        )
        async with running_worker(settings) as worker:

            def learned():
                s = worker.learner.stream("default")
                return s.learned if s else 0

            def expired():
                return sum(s.unjoined.get("sample_expired", 0) for s in worker.join.states.values())

            await wait_for(lambda: learned() + expired() >= n, 120, "every sample accounted for")
            unjoined = sum((Counter(s.unjoined) for s in worker.join.states.values()), Counter())
            return report, learned(), expired(), unjoined

    report, learned, expired, unjoined = asyncio.run(scenario())
    assert report.samples == n
    assert learned == report.labels  # every label that was sent found its sample
    assert expired == report.labels_dropped  # every sample without a label expired
    assert learned + expired == n
    assert 100 <= report.labels_dropped <= 300
    assert unjoined == {"sample_expired": expired}  # no orphan labels, no duplicates
    dead = asyncio.run(
        read_topic(settings, Topics(settings.topics.prefix).deadletter, at_least=expired)
    )
    reasons = [dict(r.headers)["eddy-dlt-reason"] for r in dead]
    assert reasons == [b"sample_expired"] * expired


def test_abrupt_drift_is_detected_soon_after_the_drift_point(settings):
    settings = _one_partition(settings, model="scaled-logreg")
    n, drift_at = 20_000, 10_000
    stream = sources.open_named("sea", seed=1, variant=0, drift_at=drift_at, drift_to=3)
    learned = asyncio.run(_learn(settings, stream, ProduceOptions(n=n, label_delay=0), n))
    assert learned.learned == n
    raw = asyncio.run(read_topic(settings, Topics(settings.topics.prefix).events, at_least=1))
    events = [decode_event(r.value) for r in raw]
    drifts = [
        e.data["position"]["sample_count"]
        for e in events
        if e.type == "drift.detected" and e.data["level"] == "drift"
    ]
    before = [c for c in drifts if c <= drift_at]
    after = [c for c in drifts if c > drift_at]
    assert len(before) <= 1, drifts
    assert after and after[0] - drift_at <= 1500, drifts
    retrains = [e for e in events if e.type == "retrain.requested"]
    assert len(retrains) == len(drifts)
    first = next(e for e in events if e.type == "drift.detected" and e.data["level"] == "drift")
    assert retrains[0].data["trigger_event_id"] == first.id
    assert first.data["detector"] == "adwin"
    assert first.data["metrics_after"]["accuracy"] < first.data["metrics_before"]["accuracy"]
