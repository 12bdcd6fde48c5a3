"""Learning against the embedded broker: River equivalence with delayed labels, sample-time
predictions, late and missing labels, drift, and producers with other partitioners."""

from __future__ import annotations

import asyncio
import itertools
import time
import zlib
from collections import Counter

import orjson
import pytest
from aiokafka import AIOKafkaProducer
from river import datasets, evaluate, linear_model, metrics, preprocessing, tree
from river import stream as river_stream
from river.datasets import synth

from eddy.streams.app import App
from eddy.streams.kafka.admin import create_topics
from eddy.streams.kafka.topics import Topics
from eddy.streams.ops import sources
from eddy.streams.ops.producer import ProduceOptions, produce
from eddy.streams.wire.codec import decode_event
from tests.integration.conftest import read_topic
from tests.integration.worker_helpers import learned, running_worker, wait_for


def _one_partition(settings, **overrides):
    s = settings.with_overrides(
        {"topic_prefix": settings.topics.prefix + "p1.", "partitions": 1, **overrides}
    )
    asyncio.run(create_topics(s.kafka, s.topics))
    return s


async def _send_as_simulate_qa(settings, dataset, delay):
    """Samples and labels in the order River's simulate_qa gives, each record stamped
    one millisecond after the one before (the order eddy merges the two topics in)."""
    topics = Topics(settings.topics.prefix)
    producer = AIOKafkaProducer(bootstrap_servers=settings.kafka.bootstrap, linger_ms=5)
    await producer.start()
    try:
        base = int(time.time() * 1000) - 10_000_000
        sends = []
        for t, (i, x, y) in enumerate(river_stream.simulate_qa(dataset, None, delay)):
            if y is None:
                topic, value = (
                    topics.samples,
                    {"id": str(i), "features": {str(k): v for k, v in x.items()}},
                )
            else:
                topic, value = topics.labels, {"id": str(i), "label": y}
            sends.append(
                await producer.send(
                    topic, orjson.dumps(value), key=str(i).encode(), timestamp_ms=base + t
                )
            )
        await producer.flush()
        await asyncio.gather(*sends)
    finally:
        await producer.stop()


CASES = [
    (
        "sea-d0",
        lambda: itertools.islice(synth.SEA(variant=0, seed=4), 20_000),
        "binary",
        lambda: preprocessing.StandardScaler() | linear_model.LogisticRegression(),
        "accuracy",
        metrics.Accuracy,
        0,
    ),
    (
        "sea-d100",
        lambda: itertools.islice(synth.SEA(variant=0, seed=4), 20_000),
        "binary",
        lambda: preprocessing.StandardScaler() | linear_model.LogisticRegression(),
        "accuracy",
        metrics.Accuracy,
        100,
    ),
    (
        "sea-d1000",
        lambda: itertools.islice(synth.SEA(variant=0, seed=4), 20_000),
        "binary",
        lambda: preprocessing.StandardScaler() | linear_model.LogisticRegression(),
        "accuracy",
        metrics.Accuracy,
        1000,
    ),
    (
        "shuttle-macro-f1-d200",
        lambda: itertools.islice(datasets.Shuttle(), 8000),
        "multiclass",
        tree.HoeffdingTreeClassifier,
        "f1",
        metrics.MacroF1,
        200,
    ),
    (
        "trump-mae-d10",
        datasets.TrumpApproval,
        "regression",
        lambda: preprocessing.StandardScaler() | linear_model.LinearRegression(),
        "mae",
        metrics.MAE,
        10,
    ),
]


async def _send_keyed_by_id(producer: AIOKafkaProducer, topic: str, events: list[dict]) -> None:
    """Send ``events`` as a plain client would: JSON values keyed by their id."""
    for event in events:
        await producer.send(topic, orjson.dumps(event), key=event["id"].encode())
    await producer.flush()


@pytest.mark.parametrize(
    ("dataset", "task", "model", "metric", "river_metric", "delay"),
    [c[1:] for c in CASES],
    ids=[c[0] for c in CASES],
)
def test_delayed_label_metrics_equal_rivers_progressive_val_score(
    settings, dataset, task, model, metric, river_metric, delay
):
    settings = _one_partition(settings)
    app = App(settings=settings)
    app.stream("default", model=model(), task=task)
    n = sum(1 for _ in dataset())

    async def scenario():
        await _send_as_simulate_qa(settings, dataset(), delay)
        async with running_worker(settings, app) as worker:
            await wait_for(lambda: learned(worker) >= n, 120, f"{n} examples learned")
            return worker.stream("default")

    learner = asyncio.run(scenario())
    ours = learner.metrics.cumulative.get(metric).get()
    river = evaluate.progressive_val_score(dataset(), model(), river_metric(), delay=delay).get()
    assert learner.learned == n
    assert ours == pytest.approx(river, abs=1e-9)


def test_samples_are_predicted_when_they_arrive_not_when_their_labels_do(settings):
    settings = _one_partition(settings)
    topics = Topics(settings.topics.prefix)

    async def scenario():
        async with running_worker(settings) as worker:
            await wait_for(lambda: worker.agent.ready.is_set(), 60, "partitions assigned")
            data = list(itertools.islice(sources.open_named("sea", seed=2), 50))
            producer = AIOKafkaProducer(bootstrap_servers=settings.kafka.bootstrap)
            await producer.start()
            try:
                samples = [{"id": f"u{i}", "features": x} for i, (x, _) in enumerate(data)]
                await _send_keyed_by_id(producer, topics.samples, samples)
                sent_at = time.monotonic()
                predictions = await read_topic(settings, topics.predictions, at_least=50)
                waited = time.monotonic() - sent_at
                assert learned(worker) == 0  # no label has come: nothing learned
                labels = [{"id": f"u{i}", "label": y} for i, (_, y) in enumerate(data)]
                await _send_keyed_by_id(producer, topics.labels, labels)
            finally:
                await producer.stop()
            await wait_for(lambda: learned(worker) >= 50, 60, "50 examples learned")
            return predictions, waited, worker.stream("default")

    predictions, waited, learner = asyncio.run(scenario())
    values = [orjson.loads(r.value) for r in predictions]
    assert sorted(v["id"] for v in values) == sorted(f"u{i}" for i in range(50))
    assert waited < 10
    assert all(v["model_examples"] == 0 and v["model_version"] == "online-1" for v in values)
    assert learner.metrics.count == 50  # the served predictions were scored when labels came


def test_late_and_missing_labels_are_learned_or_counted_as_expired(settings):
    settings = settings.with_overrides({"join_ttl_s": 2.0})
    n = 20_000
    options = ProduceOptions(n=n, label_delay=500, label_drop=0.01, seed=5)

    async def scenario():
        report = await produce(
            settings.kafka, settings.topics.prefix, sources.open_named("sea", seed=5), options
        )
        async with running_worker(settings) as worker:

            def expired():
                return worker.counts().get("sample_expired", 0)

            await wait_for(
                lambda: learned(worker) + expired() >= n, 120, "every sample accounted for"
            )
            unjoined = Counter(
                {
                    k: v
                    for k, v in worker.counts().items()
                    if not k.startswith("dead:")
                    and k.endswith(("_expired", "_evicted", "_duplicate"))
                }
            )
            predicted = sum(v for _, v in _sample_values(worker, "eddy_predictions_total"))
            return report, learned(worker), expired(), unjoined, predicted

    report, n_learned, expired, unjoined, predicted = asyncio.run(scenario())
    assert report.samples == n and predicted == n  # every sample predicted, labelled or not
    assert n_learned == report.labels  # every label that was sent found its sample
    assert expired == report.labels_dropped  # every sample without a label expired
    assert n_learned + expired == n
    assert 100 <= report.labels_dropped <= 300
    assert unjoined == {"sample_expired": expired}  # no orphan labels, no duplicates
    dead = asyncio.run(
        read_topic(settings, Topics(settings.topics.prefix).deadletter, at_least=expired)
    )
    reasons = [dict(r.headers)["eddy-dlt-reason"] for r in dead]
    assert reasons == [b"sample_expired"] * expired


def _sample_values(worker, name):
    from eddy.streams.observe.dashboard import read_registry

    return read_registry(worker.registry).get(name, [])


def test_abrupt_drift_is_detected_soon_after_the_drift_point(settings):
    settings = _one_partition(settings, model="scaled-logreg")
    n, drift_at = 20_000, 10_000
    stream = sources.open_named("sea", seed=1, variant=0, drift_at=drift_at, drift_to=3)

    async def scenario():
        await produce(settings.kafka, settings.topics.prefix, stream, ProduceOptions(n=n))
        async with running_worker(settings) as worker:
            await wait_for(lambda: learned(worker) >= n, 120, f"{n} examples learned")

    asyncio.run(scenario())
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


def test_samples_from_aiokafka_and_labels_from_librdkafka_all_join(settings):
    """aiokafka partitions keys with murmur2, librdkafka (confluent-kafka) with CRC32:
    most labels land on another partition than their sample; eddy still joins them all."""
    confluent_kafka = pytest.importorskip("confluent_kafka")
    topics = Topics(settings.topics.prefix)
    n = 300
    data = list(itertools.islice(sources.open_named("sea", seed=9), n))

    async def send_samples():
        producer = AIOKafkaProducer(bootstrap_servers=settings.kafka.bootstrap)
        await producer.start()
        try:
            samples = [{"id": f"k{i}", "features": x} for i, (x, _) in enumerate(data)]
            await _send_keyed_by_id(producer, topics.samples, samples)
        finally:
            await producer.stop()

    asyncio.run(send_samples())
    labels = confluent_kafka.Producer({"bootstrap.servers": settings.kafka.bootstrap})
    delivered = []
    for i, (_, y) in enumerate(data):
        labels.produce(
            topics.labels,
            orjson.dumps({"id": f"k{i}", "label": y}),
            key=f"k{i}".encode(),
            on_delivery=lambda err, msg: delivered.append(
                (err, msg.key().decode(), msg.partition())
            ),
        )
    assert labels.flush(30) == 0
    assert all(err is None for err, _, _ in delivered)
    crc = {f"k{i}": zlib.crc32(f"k{i}".encode()) % settings.topics.partitions for i in range(n)}
    assert {key: p for _, key, p in delivered} == crc  # librdkafka's consistent_random: CRC32

    async def scenario():
        async with running_worker(settings) as worker:
            await wait_for(lambda: learned(worker) >= n, 90, f"{n} examples learned")
            return learned(worker), worker.counts()

    n_learned, counts = asyncio.run(scenario())
    assert n_learned == n
    assert counts.get("sample_expired", 0) == 0 and counts.get("label_expired", 0) == 0
