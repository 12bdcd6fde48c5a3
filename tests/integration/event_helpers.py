"""Events as River's ``stream.simulate_qa`` yields them, stamped with event times and
sent by a librdkafka client: what the event-time and crash tests feed the worker."""

from __future__ import annotations

import time

import orjson
from river import stream as river_stream

from eddy.streams.kafka.topics import Topics

BASE = int(time.time() * 1000) - 10_000_000  # event times in the past, as in a replay
# Read live, a record is processed only once the other inputs were fetched after it was
# sent plus EDDY_MERGE_GRACE_MS: the grace must cover how long the producer takes to get a
# record onto the broker. produce_librdkafka's bursts of 2,000 on a loaded 2-core machine
# took up to 0.53 s (p50 20-90 ms, librdkafka's msg.latency()), so live runs give it a
# second (README: "Event time, and when eddy equals River").
LIVE_GRACE_MS = 1000


def named(dataset):
    """Feature names as JSON has them (River's synthetic sets number their features)."""
    return lambda: (({str(k): v for k, v in x.items()}, y) for x, y in dataset())


def qa_events(dataset, delay: int, stream: str | None = None):
    """A stream's events as simulate_qa yields them, ts = BASE + position, as
    ``(ts, rank, topic, id, event)``; ids are prefixed with the stream's name if given."""
    out = []
    for position, (i, x, y) in enumerate(river_stream.simulate_qa(dataset, None, delay)):
        ts, eid = BASE + position, f"{stream}-{i}" if stream else str(i)
        if y is None:
            event = {"id": eid, "ts": ts, "features": x} | ({"stream": stream} if stream else {})
            out.append((ts, 1, "samples", eid, event))
        else:
            out.append((ts, 0, "labels", eid, {"id": eid, "ts": ts, "label": y}))
    return out


def produce_librdkafka(settings, events, pause_every: int | None = None) -> None:
    """Send with librdkafka (keys: ids, its CRC32 partitioner; record timestamps: its
    send clock, thousands per millisecond); ``pause_every``: flush and pause now and
    then, so that a worker already running reads the stream live, caught up between
    bursts."""
    topics = Topics(settings.topics.prefix)
    import confluent_kafka  # the tests that call this skip without it

    producer = confluent_kafka.Producer(
        {"bootstrap.servers": settings.kafka.bootstrap, "linger.ms": 5}
    )
    failed = []

    def on_delivery(err, _msg):
        if err is not None:
            failed.append(err)

    for n, (_, _, topic, eid, event) in enumerate(events, 1):
        name = topics.samples if topic == "samples" else topics.labels
        producer.produce(name, orjson.dumps(event), key=eid.encode(), on_delivery=on_delivery)
        if pause_every and n % pause_every == 0:
            producer.flush(30)
            time.sleep(0.02)  # pacing the producer, not waiting for the worker
        elif n % 10_000 == 0:
            producer.poll(0)
    assert producer.flush(60) == 0
    assert not failed, failed[:3]
