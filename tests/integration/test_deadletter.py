"""Bad events land on the dead-letter topic with their reason; good ones pass through."""

import asyncio

import orjson
from prometheus_client import CollectorRegistry

from eddy.streams.codec import decode_sample
from eddy.streams.deadletter import (
    H_EXCEPTION_CLASS,
    H_EXCEPTION_MESSAGE,
    H_OFFSET,
    H_PARTITION,
    H_REASON,
    H_TOPIC,
    DeadLetterQueue,
)
from eddy.streams.kafka import make_consumer, start_producer
from eddy.streams.metrics import EdgeMetrics
from eddy.streams.topics import Topics
from tests.integration.conftest import read_topic

GOOD = [orjson.dumps({"id": f"g{i}", "features": {"x": i}}) for i in range(5)]
BAD = {
    b"not json": "invalid_json",
    b'{"id":"b1"}': "schema",
    b'{"id":"b2","features":{"x":"high"}}': "schema",
    b'{"id":"b3","features":[' + b"1," * 3000 + b"1]}": "too_large",
}


def _decode_with_small_cap(raw):
    return decode_sample(raw, max_bytes=4096)  # so that the long vector is "too large"


async def _scenario(settings):
    topics = Topics(settings.topics.prefix)
    producer = await start_producer(settings)
    try:
        for i, raw in enumerate([*GOOD, *BAD]):
            await producer.send_and_wait(
                topics.samples, raw, key=b"k", partition=0, headers=[("trace", b"t%d" % i)]
            )
    finally:
        await producer.stop()

    registry = CollectorRegistry()
    metrics = EdgeMetrics.create(registry)
    consumer = make_consumer(
        settings,
        "test-edge",
        topics.samples,
        group_id="edge-" + settings.topics.prefix,
        auto_offset_reset="earliest",
        enable_auto_commit=False,
    )
    producer = await start_producer(settings, "test-dlq")
    await consumer.start()
    try:
        dlq = DeadLetterQueue(producer, topics.deadletter, metrics, topics.kind, group="edge-group")
        decoded = []
        loop = asyncio.get_running_loop()
        deadline = loop.time() + 30
        while len(decoded) < len(GOOD) and loop.time() < deadline:
            batch = await consumer.getmany(timeout_ms=200)
            for records in batch.values():
                decoded += await dlq.decode_all(records, _decode_with_small_cap)
    finally:
        await consumer.stop()
        await producer.stop()
    return decoded, registry


def test_bad_samples_are_dead_lettered_with_reason_and_origin(settings):
    decoded, registry = asyncio.run(_scenario(settings))
    assert [s.id for _, s in decoded] == [f"g{i}" for i in range(5)]

    topics = Topics(settings.topics.prefix)
    dead = asyncio.run(read_topic(settings, topics.deadletter, at_least=len(BAD)))
    assert [r.value for r in dead] == list(BAD)  # original bytes, unchanged, in order
    for offset, (record, reason) in enumerate(zip(dead, BAD.values(), strict=True), start=5):
        headers = {k: v.decode() for k, v in record.headers}
        assert headers[H_TOPIC] == topics.samples
        assert headers[H_PARTITION] == "0"
        assert headers[H_OFFSET] == str(offset)
        assert headers[H_REASON] == reason
        assert headers[H_EXCEPTION_CLASS].startswith("eddy.streams.exceptions.")
        assert headers[H_EXCEPTION_MESSAGE]
        assert headers["trace"] == f"t{offset}"  # the producer's own headers are kept
        assert record.key == b"k"
    assert "features" in dict(dead[1].headers)[H_EXCEPTION_MESSAGE].decode()

    def count(reason):
        return registry.get_sample_value(
            "eddy_dead_letter_total", {"topic": "samples", "reason": reason}
        )

    assert count("invalid_json") == 1
    assert count("schema") == 2
    assert count("too_large") == 1
    assert registry.get_sample_value("eddy_events_decoded_total", {"topic": "samples"}) == 5
