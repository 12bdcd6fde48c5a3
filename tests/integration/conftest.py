"""Integration fixtures: one embedded broker per session, fresh topics per test."""

from __future__ import annotations

import asyncio
import uuid
from collections.abc import Iterator
from pathlib import Path

import pytest
from aiokafka import AIOKafkaConsumer, ConsumerRecord, TopicPartition

from streams.broker import EmbeddedBroker
from streams.kafka import end_offsets
from streams.settings import Settings
from streams.topics import create_topics


@pytest.fixture(scope="session")
def broker() -> Iterator[EmbeddedBroker]:
    """A real Kafka-protocol broker (Tansu), stopped at the end of the session."""
    with EmbeddedBroker() as b:
        yield b


@pytest.fixture
def settings(broker: EmbeddedBroker, tmp_path: Path) -> Settings:
    """Settings for one test: its own topic prefix and data directory, topics created."""
    s = Settings(
        bootstrap=broker.bootstrap,
        topic_prefix=f"t{uuid.uuid4().hex[:10]}.",
        partitions=3,
        data_dir=tmp_path / "eddy-data",
    )
    asyncio.run(create_topics(s))
    return s


async def read_topic(
    settings: Settings, topic: str, within: float = 20.0, at_least: int = 0
) -> list[ConsumerRecord]:
    """Every record of ``topic`` from the beginning to its end offsets.

    Waits (up to ``within`` seconds) until at least ``at_least`` records have arrived.
    """
    consumer = AIOKafkaConsumer(
        bootstrap_servers=settings.bootstrap, enable_auto_commit=False, client_id="test-reader"
    )
    await consumer.start()
    try:
        await consumer.topics()  # refresh metadata for every topic
        parts = [TopicPartition(topic, p) for p in sorted(consumer.partitions_for_topic(topic))]
        loop = asyncio.get_running_loop()
        deadline = loop.time() + within
        while True:
            ends = await end_offsets(consumer, parts)
            if sum(ends.values()) >= at_least or loop.time() > deadline:
                break
            await asyncio.sleep(0.05)
        for tp in parts:
            consumer.seek(tp, 0)
        records: list[ConsumerRecord] = []
        remaining = {tp for tp in parts if ends[tp] > 0}
        while remaining:
            if loop.time() > deadline + within:
                msg = f"reading {topic} did not reach its end offsets {ends} in time"
                raise TimeoutError(msg)
            batch = await consumer.getmany(*remaining, timeout_ms=200)
            for tp, recs in batch.items():
                records.extend(r for r in recs if r.offset < ends[tp])
                if recs and recs[-1].offset >= ends[tp] - 1:
                    remaining.discard(tp)
        return records
    finally:
        await consumer.stop()
