"""Requests the maintenance loop cannot serve are refused, recorded and passed over:
the next request is served. Garbage on the events topic is dead-lettered once."""

from __future__ import annotations

import asyncio
import itertools

import orjson

from eddy.consumers.exporter import Exporter
from eddy.consumers.retrainer import Retrainer
from eddy.streams.kafka.admin import create_topics
from eddy.streams.kafka.clients import start_producer
from eddy.streams.kafka.topics import Topics
from eddy.streams.ops import sources
from eddy.streams.ops.producer import ProduceOptions, produce
from eddy.streams.state.registry_topic import KafkaRegistry
from eddy.streams.wire.codec import decode_event, make_event
from eddy.streams.wire.deadletter import H_REASON
from tests.integration.conftest import read_topic
from tests.integration.worker_helpers import learned, running_consumer, running_worker, wait_for


async def _send(settings, *values: bytes) -> None:
    producer = await start_producer(settings.kafka)
    try:
        for value in values:
            await producer.send_and_wait(Topics(settings.topics.prefix).events, value)
    finally:
        await producer.stop()


def _retrain(stream: str, **data: object) -> bytes:
    event = make_event(
        "retrain.requested",
        "eddy/test",
        {"stream": stream, "reason": "manual", **data},
        subject=stream,
    )
    return orjson.dumps(event)


def test_a_bad_request_is_refused_and_the_next_one_is_served(settings):
    settings = settings.with_overrides(
        {
            "topic_prefix": settings.topics.prefix + "r.",
            "partitions": 1,
            "retrain_epochs": 3,
            "retrain_folds": 2,
            "retrain_hidden": (16,),
            "retrain_min_examples": 500,
            "retrain_wait_s": 5.0,
        }
    )
    asyncio.run(create_topics(settings.kafka, settings.topics))
    topics = Topics(settings.topics.prefix)
    garbage = [b"{not json", orjson.dumps({"specversion": "1.0", "type": "eddy.nonsense"})]

    async def scenario():
        examples = itertools.islice(sources.open_named("sea", seed=3), 3000)
        await produce(settings.kafka, settings.topics.prefix, examples, ProduceOptions(n=3000))
        async with running_worker(settings) as worker:
            await wait_for(lambda: learned(worker) >= 3000, 90, "3,000 examples learned")
        async with (
            running_consumer(settings, Retrainer) as retrainer,
            running_consumer(settings, Exporter) as exporter,
        ):
            await wait_for(
                lambda: retrainer.ready.is_set() and exporter.ready.is_set(),
                60,
                "the consumers joined their groups",
            )
            bad_version = make_event(
                "model.updated",
                "eddy/test",
                {
                    "model": "default",
                    "version": "v0042",
                    "parent_version": None,
                    "card": "default/v0042/card.json",
                    "promoted": True,
                    "metrics": {},
                },
                subject="default",
            )
            await _send(
                settings,
                *garbage,
                _retrain("ghost"),  # a stream that never learned anything
                _retrain("default", window={"last_n": 100}),  # fewer than the minimum
                orjson.dumps(bad_version),  # the exporter: a version that does not exist
                _retrain("default"),  # and then a request that can be served
            )
            await wait_for(
                lambda: retrainer.handled >= 1 and exporter.handled >= 1,
                180,
                "the good request retrained and exported",
            )
            return retrainer.refused, exporter.refused

    retrainer_refused, exporter_refused = asyncio.run(scenario())
    assert (retrainer_refused, exporter_refused) == (2, 1)

    events = [
        _decoded(r.value) for r in asyncio.run(read_topic(settings, topics.events, at_least=10))
    ]
    events = [e for e in events if e is not None]
    refusals = [e.data for e in events if e.type == "maintenance.refused"]
    assert sorted((r["consumer"], r["model"]) for r in refusals) == [
        ("exporter", "default"),
        ("retrainer", "default"),
        ("retrainer", "ghost"),
    ]
    assert any("EDDY_RETRAIN_MIN_EXAMPLES" in r["reason"] for r in refusals)
    assert [e.data["version"] for e in events if e.type == "model.exported"] == ["v0001"]

    async def history():
        async with KafkaRegistry.open(
            settings.kafka, settings.topics.prefix, settings.data_dir / "rebuilt"
        ) as registry:
            return registry.mirror.history()

    actions = [(e["action"], e["model"]) for e in asyncio.run(history())]
    assert ("retrainer-refused", "ghost") in actions and ("retrainer-refused", "default") in actions
    assert ("exporter-refused", "default") in actions and ("retrain", "default") in actions

    # Garbage on the events topic: dead-lettered once, by the retrainer's group only.
    dead = asyncio.run(read_topic(settings, topics.deadletter, at_least=len(garbage)))
    assert sorted(dict(r.headers)[H_REASON].decode() for r in dead) == ["invalid_json", "schema"]
    assert [r.value for r in dead] == garbage


def _decoded(raw: bytes):
    from eddy.streams.wire.codec import DecodeError

    try:
        return decode_event(raw)
    except DecodeError:
        return None  # the garbage this test sent
