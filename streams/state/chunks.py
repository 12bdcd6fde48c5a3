"""Large values over Kafka: split into chunks, reassembled and checked by a manifest.

Real Kafka refuses messages over ``max.message.bytes`` (1 MB by default), and model
state and artifacts are larger than that. A blob is sent as chunk records keyed
``<name>/<slot>/<i>`` followed by a manifest record (JSON) that lists the chunks'
offsets, the blob's size and SHA-256. Writers alternate between two slots (``a``,
``b``), so on a compacted topic a crash between a blob's chunks and its manifest never
leaves the last complete manifest pointing at overwritten chunks; chunk keys a smaller
blob no longer uses are deleted with tombstones. Readers take a blob only when its
manifest has arrived and its chunks hash to the manifest's SHA-256.
"""

from __future__ import annotations

import asyncio
import hashlib
from typing import Any

import orjson
from aiokafka import AIOKafkaConsumer, AIOKafkaProducer, TopicPartition

from eddy.streams.exceptions import BrokerError
from eddy.streams.kafka.clients import assign


def chunk_size(max_message_bytes: int) -> int:
    """Bytes per chunk: half the message cap leaves room for keys and headers."""
    return max(16 * 1024, max_message_bytes // 2)


def other_slot(slot: str | None) -> str:
    """The slot the next blob of a name goes to."""
    return "b" if slot == "a" else "a"


async def send_blob(
    producer: AIOKafkaProducer,
    topic: str,
    partition: int,
    name: str,
    data: bytes,
    size: int,
    slot: str,
    previous_chunks: int = 0,
    extra: dict[str, Any] | None = None,
) -> dict[str, Any]:
    """Send ``data`` as chunks of ``size`` into ``slot`` of ``name``, then its manifest
    (keyed ``name``); returns the manifest once the broker has everything."""
    pieces = [data[i : i + size] for i in range(0, len(data), size)] or [b""]
    sends = [
        await producer.send(topic, piece, key=f"{name}/{slot}/{i}".encode(), partition=partition)
        for i, piece in enumerate(pieces)
    ]
    # Chunk keys of this slot that the last blob in it used and this one does not.
    for i in range(len(pieces), previous_chunks):
        sends.append(
            await producer.send(topic, None, key=f"{name}/{slot}/{i}".encode(), partition=partition)
        )
    metadata = await asyncio.gather(*sends)
    manifest = {
        "name": name,
        "slot": slot,
        "chunks": [m.offset for m in metadata[: len(pieces)]],
        "size": len(data),
        "sha256": hashlib.sha256(data).hexdigest(),
    } | (extra or {})
    sent = await producer.send(
        topic, orjson.dumps(manifest), key=name.encode(), partition=partition
    )
    manifest["offset"] = (await sent).offset
    return manifest


async def fetch_blob(
    consumer: AIOKafkaConsumer, tp: TopicPartition, manifest: dict[str, Any], within_s: float = 30.0
) -> bytes:
    """The blob a manifest describes, read back by offset and checked against its SHA-256.

    ``consumer`` is assigned to ``tp`` for the read. Raises :class:`BrokerError` when a
    chunk is missing (compacted away, or the topic was recreated) or the hash differs.
    """
    wanted = list(manifest["chunks"])
    prefix = f"{manifest['name']}/{manifest['slot']}/".encode()
    pieces: dict[int, bytes] = {}
    assign(consumer, [tp])
    loop = asyncio.get_running_loop()
    deadline = loop.time() + within_s
    position = min(wanted)
    consumer.seek(tp, position)
    while len(pieces) < len(wanted):
        if loop.time() > deadline:
            msg = f"chunks of {manifest['name']} at {wanted} not all readable from {tp}"
            raise BrokerError(msg)
        batch = await consumer.getmany(tp, timeout_ms=500, max_records=1000)
        for record in batch.get(tp, []):
            if record.offset in wanted and (record.key or b"").startswith(prefix):
                pieces[wanted.index(record.offset)] = record.value or b""
            if record.offset >= max(wanted):
                break
        missing = [o for i, o in enumerate(wanted) if i not in pieces]
        if missing and batch.get(tp) and batch[tp][-1].offset >= max(wanted):
            msg = f"chunks of {manifest['name']} at offsets {missing} are gone from {tp}"
            raise BrokerError(msg)
    data = b"".join(pieces[i] for i in range(len(wanted)))
    if hashlib.sha256(data).hexdigest() != manifest["sha256"]:
        msg = f"{manifest['name']} read from {tp} does not match its manifest's SHA-256"
        raise BrokerError(msg)
    return data


async def latest_manifests(
    consumer: AIOKafkaConsumer, tp: TopicPartition, name: str, end: int, limit: int = 8
) -> list[dict[str, Any]]:
    """Up to ``limit`` manifests of ``name`` in ``tp`` before ``end``, newest first.

    Reads backwards in growing windows, so finding the last checkpoint of a long
    changelog costs a few fetches, not a read of the whole partition.
    """
    found: list[dict[str, Any]] = []
    key = name.encode()
    window, stop = 64, end
    assign(consumer, [tp])
    while stop > 0 and len(found) < limit:
        start = max(0, stop - window)
        consumer.seek(tp, start)
        seen: list[dict[str, Any]] = []
        position = start
        while position < stop:
            batch = await consumer.getmany(tp, timeout_ms=1000, max_records=2000)
            records = batch.get(tp, [])
            if not records:
                break
            for record in records:
                if record.offset >= stop:
                    break
                if record.key == key and record.value:
                    try:
                        manifest = orjson.loads(record.value)
                    except orjson.JSONDecodeError:
                        continue
                    manifest["offset"] = record.offset
                    seen.append(manifest)
            position = records[-1].offset + 1
        found.extend(reversed(seen))
        stop, window = start, window * 4
    return found[:limit]
