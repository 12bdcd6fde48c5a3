"""Bad input on every topic the worker reads: it keeps running, each bad event lands on
the dead-letter topic with its reason, and the good events around them are learned."""

from __future__ import annotations

import asyncio
import collections
import time

import orjson

from eddy.streams.kafka.clients import start_producer
from eddy.streams.kafka.topics import Topics
from eddy.streams.settings import Settings
from eddy.streams.wire.deadletter import H_REASON
from tests.integration.conftest import read_topic
from tests.integration.worker_helpers import running_worker, wait_for

NOW_MS = int(time.time() * 1000)
YEAR_MS = 365 * 24 * 3600 * 1000


def sample(i: int, **extra: object) -> bytes:
    return orjson.dumps({"id": f"good-{i}", "features": {"x": i % 7, "y": i % 3}} | extra)


def label(i: int, value: object = None) -> bytes:
    return orjson.dumps({"id": f"good-{i}", "label": (i % 2 == 0) if value is None else value})


# (topic kind, raw value, expected dead-letter reason)
BAD_SAMPLES = [
    (b"{not json", "invalid_json"),
    (b"[1, 2, 3]", "schema"),
    (b'{"id": "s-nan", "features": {"x": NaN}}', "invalid_json"),
    (b'{"id": "s-inf", "features": {"x": Infinity}}', "invalid_json"),
    (b'{"id": "s-big", "features": {"x": 1e999}}', "invalid_json"),
    (orjson.dumps({"id": 5, "features": {"x": 1}}), "schema"),
    (orjson.dumps({"id": "s-type", "features": {"x": ["high"]}}), "schema"),
    (orjson.dumps({"id": "s-empty", "features": {"x": ""}}), "schema"),
    (orjson.dumps({"id": "s-huge-value", "features": {"x": 1e300}}), "value_too_large"),
    (orjson.dumps({"id": "s-stream", "stream": "x" * 129, "features": {"x": 1}}), "schema"),
    (orjson.dumps({"id": "s-missing"}), "schema"),
    (orjson.dumps({"id": "s-extra", "features": {"x": 1}, "evil": 1}), "schema"),
    (orjson.dumps({"id": "s-huge", "features": {f"f{i}": 1 for i in range(20_000)}}), "schema"),
    (orjson.dumps({"id": "s-long", "features": [1.5] * 200_000}), "too_large"),
    (
        orjson.dumps({"id": "s-future", "features": {"x": 1}, "ts": NOW_MS + 10 * YEAR_MS}),
        "ts_future",
    ),
    (orjson.dumps({"id": "s-path", "stream": "../../etc", "features": {"x": 1}}), "schema"),
    (b"", "invalid_json"),
    (b"\xff\xfe\x00garbage", "invalid_json"),
]
BAD_LABELS = [
    (b"{oops", "invalid_json"),
    (orjson.dumps({"id": "l-type", "label": {"nested": 1}}), "schema"),
    (orjson.dumps({"id": "l-missing"}), "schema"),
    (orjson.dumps({"id": "l-future", "label": True, "ts": NOW_MS + 10 * YEAR_MS}), "ts_future"),
]
# The internal repartition topic is read by the worker too: garbage there (someone else's
# producer) is dead-lettered like any bad event.
BAD_REPARTITION = [
    (b"{bad example", [("eddy-kind", b"example")], "invalid_json"),
    (
        orjson.dumps({"id": "e-1", "stream": "default", "features": {"x": 1}}),
        [("eddy-kind", b"example")],
        "schema",
    ),
    (b'{"id": "r-1", "features": {"x": 1}}', [], "invalid"),  # no kind: not eddy's
]


def test_fuzzed_topics_dead_letter_bad_events_and_learn_good_ones(settings: Settings) -> None:
    settings = settings.with_overrides({"max_message_bytes": 256 * 1024, "join_ttl_s": 2.0})
    topics = Topics(settings.topics.prefix)
    n_good = 600

    async def scenario() -> tuple[collections.Counter[str], int]:
        async with running_worker(settings) as worker:
            producer = await start_producer(settings.kafka, "fuzzer", max_request_size=4 << 20)
            try:
                sends = []
                bad_iter = iter(BAD_SAMPLES)
                for i in range(n_good):
                    part = i % settings.topics.partitions
                    sends.append(
                        await producer.send(
                            topics.samples, sample(i), key=f"good-{i}".encode(), partition=part
                        )
                    )
                    sends.append(
                        await producer.send(
                            topics.labels, label(i), key=f"good-{i}".encode(), partition=part
                        )
                    )
                    if i % 30 == 0:  # bad ones between good ones, on every partition
                        bad = next(bad_iter, None)
                        if bad is not None:
                            raw = bad[0]
                            sends.append(await producer.send(topics.samples, raw, partition=part))
                # A sample with a far-past event time is valid (backfills are): learned.
                old = orjson.dumps({"id": "old-1", "features": {"x": 1}, "ts": 1})
                sends.append(await producer.send(topics.samples, old, key=b"old-1", partition=0))
                sends.append(
                    await producer.send(
                        topics.labels,
                        label(0, True).replace(b"good-0", b"old-1"),
                        key=b"old-1",
                        partition=0,
                    )
                )
                # A good sample whose Kafka record timestamp is years ahead must not
                # move the join's clock and expire everything else waiting.
                sends.append(
                    await producer.send(
                        topics.samples,
                        orjson.dumps({"id": "skewed", "features": {"x": 2}}),
                        key=b"skewed",
                        partition=1,
                        timestamp_ms=NOW_MS + 10 * YEAR_MS,
                    )
                )
                sends.append(
                    await producer.send(
                        topics.labels,
                        orjson.dumps({"id": "skewed", "label": False}),
                        key=b"skewed",
                        partition=1,
                    )
                )
                # Unknown class for a binary task, and a duplicate sample id.
                sends.append(
                    await producer.send(
                        topics.samples,
                        orjson.dumps({"id": "banana", "features": {"x": 3}, "label": "banana"}),
                        partition=2,
                    )
                )
                sends.append(await producer.send(topics.samples, sample(5), partition=5 % 3))
                for raw, _ in BAD_LABELS:
                    sends.append(await producer.send(topics.labels, raw, partition=0))
                for raw, headers, _ in BAD_REPARTITION:
                    sends.append(
                        await producer.send(topics.repartition, raw, partition=0, headers=headers)
                    )
                await asyncio.gather(*sends)
            finally:
                await producer.stop()

            def learned() -> int:
                stream = worker.stream("default")
                return stream.learned if stream else 0

            await wait_for(lambda: learned() >= n_good + 2, 60, "the good events learned")
            expected_dead = len(BAD_SAMPLES) + len(BAD_LABELS) + len(BAD_REPARTITION) + 2
            records = await read_topic(settings, topics.deadletter, at_least=expected_dead)
            reasons = collections.Counter(dict(r.headers)[H_REASON].decode() for r in records)
            return reasons, learned()

    reasons, learned = asyncio.run(scenario())
    want = collections.Counter(r for _, r in BAD_SAMPLES + BAD_LABELS)
    want.update(r for _, _, r in BAD_REPARTITION)
    for reason, count in want.items():
        assert reasons[reason] >= count, (reason, reasons)
    assert reasons["sample_duplicate"] == 1, reasons  # the re-sent good-5
    assert reasons["unknown_class"] == 1, reasons  # "banana" in a binary task (inline label)
    # Every good sample, the far-past one and the skewed one learned; nothing expired.
    assert learned == n_good + 2, learned
    assert reasons["sample_expired"] == 0, reasons
