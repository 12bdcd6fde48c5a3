"""The baselines eddy is measured against, each run on the same broker and events.

- :func:`raw_read`: an aiokafka consumer that reads and decodes with orjson, nothing else.
- :func:`hand_written_inline`: the loop a user would write for samples with inline
  labels: read, decode, ``predict_one``, update one metric, ``learn_one``.
- :func:`hand_written_two_topics`: the same with labels on their own topic, matched to
  samples through a dict (predict when the sample comes, score and learn when its
  label does).
- :func:`river_rate`: River's ``progressive_val_score`` in process, no Kafka.

Each returns events per second from its first record to its ``n``-th.
"""

from __future__ import annotations

import itertools
import time
from typing import Any

import orjson
from aiokafka import AIOKafkaConsumer, TopicPartition

from eddy.streams.ops import sources

FETCH = {"max_records": 5000, "timeout_ms": 200}


def river_model(name: str) -> Any:
    """A fresh River model for a bench model name: the very object eddy's catalogue makes
    for that name (``scaled-logreg``: River's StandardScaler and OneHotEncoder union in
    front of LogisticRegression), so that both sides run the same model."""
    from eddy.models.catalogue import CATALOGUE

    return CATALOGUE[name].factory("binary")


async def _consumer(bootstrap: str, topics: list[str]) -> AIOKafkaConsumer:
    consumer = AIOKafkaConsumer(bootstrap_servers=bootstrap, enable_auto_commit=False)
    await consumer.start()
    parts = [TopicPartition(t, p) for t in topics for p in consumer.partitions_for_topic(t) or {0}]
    consumer.assign(parts)
    for tp in parts:
        consumer.seek(tp, 0)
    return consumer


async def raw_read(bootstrap: str, topic: str, n: int) -> float:
    """aiokafka ``getmany`` + ``orjson.loads`` of ``n`` records."""
    consumer = await _consumer(bootstrap, [topic])
    seen, started = 0, None
    try:
        while seen < n:
            for records in (await consumer.getmany(**FETCH)).values():
                started = started or time.perf_counter()
                for r in records:
                    orjson.loads(r.value)
                seen += len(records)
    finally:
        await consumer.stop()
    return n / (time.perf_counter() - started)


async def hand_written_inline(bootstrap: str, topic: str, n: int, model_name: str) -> float:
    """The user's loop over samples that carry their label."""
    from river import metrics

    model, metric = river_model(model_name), metrics.Accuracy()
    consumer = await _consumer(bootstrap, [topic])
    seen, started = 0, None
    try:
        while seen < n:
            for records in (await consumer.getmany(**FETCH)).values():
                started = started or time.perf_counter()
                for r in records:
                    event = orjson.loads(r.value)
                    x, y = event["features"], event["label"]
                    y_pred = model.predict_one(x)
                    if y_pred is not None:
                        metric.update(y, y_pred)
                    model.learn_one(x, y)
                seen += len(records)
    finally:
        await consumer.stop()
    return n / (time.perf_counter() - started)


async def hand_written_two_topics(
    bootstrap: str, samples: str, labels: str, n: int, model_name: str
) -> float:
    """The user's loop over two topics: samples predicted on arrival, labels matched by id."""
    from river import metrics

    model, metric = river_model(model_name), metrics.Accuracy()
    waiting: dict[str, tuple[dict[str, Any], Any]] = {}  # id -> (features, prediction)
    early: dict[str, Any] = {}  # labels that came before their sample
    consumer = await _consumer(bootstrap, [samples, labels])
    learned, started = 0, None
    try:
        while learned < n:
            for tp, records in (await consumer.getmany(**FETCH)).items():
                started = started or time.perf_counter()
                for r in records:
                    event = orjson.loads(r.value)
                    if tp.topic == samples:
                        x = event["features"]
                        waiting[event["id"]] = (x, model.predict_one(x))
                        if event["id"] in early:
                            label = early.pop(event["id"])
                        else:
                            continue
                    elif event["id"] in waiting:
                        label = event["label"]
                    else:
                        early[event["id"]] = event["label"]
                        continue
                    x, y_pred = waiting.pop(event["id"])
                    if y_pred is not None:
                        metric.update(label, y_pred)
                    model.learn_one(x, label)
                    learned += 1
    finally:
        await consumer.stop()
    return n / (time.perf_counter() - started)


def river_rate(model_name: str, n: int) -> float:
    """River's ``progressive_val_score`` (predict, score, learn) on SEA, in process."""
    from river import evaluate, metrics

    data = list(itertools.islice(sources.open_named("sea", seed=1), n))
    started = time.perf_counter()
    evaluate.progressive_val_score(data, river_model(model_name), metrics.Accuracy())
    return n / (time.perf_counter() - started)
