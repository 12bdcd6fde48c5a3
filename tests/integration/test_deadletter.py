"""Bad events land on the dead-letter topic with their reason and origin; one path, one
counter: the counter equals what the topic holds, join expirations included."""

import asyncio

import orjson

from eddy.streams.kafka.clients import start_producer
from eddy.streams.kafka.topics import Topics
from eddy.streams.wire.deadletter import (
    H_EXCEPTION_CLASS,
    H_EXCEPTION_MESSAGE,
    H_GROUP,
    H_OFFSET,
    H_PARTITION,
    H_REASON,
    H_TOPIC,
)
from tests.integration.conftest import read_topic
from tests.integration.worker_helpers import learned, running_worker, wait_for

GOOD = [orjson.dumps({"id": f"g{i}", "features": {"x": i}, "label": i % 2 == 0}) for i in range(5)]
BAD = {
    b"not json": "invalid_json",
    b'{"id":"b1"}': "schema",
    b'{"id":"b2","features":{"x":["high"]}}': "schema",
    b'{"id":"b3","features":[' + b"1," * 15000 + b"1]}": "too_large",
    b'{"id":"b4","features":{"x":1e300}}': "value_too_large",
    b'{"id":"b5","features":{"x":1}}': "sample_expired",  # no label ever comes
}


def test_bad_samples_are_dead_lettered_with_reason_and_origin_and_counted_once(settings):
    settings = settings.with_overrides({"max_message_bytes": 4096 + 16 * 1024, "join_ttl_s": 1.0})
    topics = Topics(settings.topics.prefix)

    async def scenario():
        producer = await start_producer(settings.kafka)
        try:
            for i, raw in enumerate([*GOOD, *BAD]):
                await producer.send_and_wait(
                    topics.samples, raw, key=b"k", partition=0, headers=[("trace", b"t%d" % i)]
                )
        finally:
            await producer.stop()
        async with running_worker(settings) as worker:
            await wait_for(lambda: learned(worker) >= len(GOOD), 60, "the good samples learned")
            dead = await read_topic(settings, topics.deadletter, at_least=len(BAD))
            worker.agent.on_tick.publish_metrics()  # type: ignore[union-attr]
            counted = worker.registry.get_sample_value
            return dead, counted

    dead, counted = asyncio.run(scenario())
    assert [r.value[:20] for r in dead] == [raw[:20] for raw in BAD]  # original bytes, in order
    for offset, (record, reason) in enumerate(zip(dead, BAD.values(), strict=True), start=5):
        headers = {k: v.decode() for k, v in record.headers}
        assert headers[H_TOPIC] == topics.samples
        assert headers[H_PARTITION] == "0"
        assert headers[H_OFFSET] == str(offset)
        assert headers[H_REASON] == reason
        assert headers[H_GROUP] == f"{settings.topics.prefix}worker"
        assert headers[H_EXCEPTION_CLASS].startswith("eddy.streams.")
        assert headers[H_EXCEPTION_MESSAGE]
        assert headers["trace"] == f"t{offset}"  # the producer's own headers are kept
        assert record.key == b"k"
    assert "features" in dict(dead[1].headers)[H_EXCEPTION_MESSAGE].decode()
    expired_message = dict(dead[-1].headers)[H_EXCEPTION_MESSAGE].decode()
    assert "its label never came" in expired_message

    def count(reason):
        return counted("eddy_dead_letter_total", {"topic": "samples", "reason": reason})

    by_reason = {reason: count(reason) for reason in set(BAD.values())}
    assert by_reason == {
        "invalid_json": 1,
        "schema": 2,
        "too_large": 1,
        "value_too_large": 1,
        "sample_expired": 1,
    }
    assert sum(by_reason.values()) == len(dead)  # one counter for every dead letter
