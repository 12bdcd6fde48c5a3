"""Integration fixtures: one embedded broker per session, fresh topics per test."""

from __future__ import annotations

import asyncio
import uuid
from collections.abc import Iterator
from pathlib import Path

import pytest
from aiokafka import ConsumerRecord

from eddy.streams.kafka.admin import create_topics
from eddy.streams.kafka.broker import EmbeddedBroker
from eddy.streams.kafka.clients import read_records
from eddy.streams.settings import Settings


@pytest.fixture(scope="session")
def broker() -> Iterator[EmbeddedBroker]:
    """A real Kafka-protocol broker (Tansu), stopped at the end of the session."""
    with EmbeddedBroker() as b:
        yield b


@pytest.fixture
def settings(broker: EmbeddedBroker, tmp_path: Path) -> Settings:
    """Settings for one test: its own topic prefix and data directory, topics created."""
    s = Settings.build(
        bootstrap=broker.bootstrap,
        topic_prefix=f"t{uuid.uuid4().hex[:10]}.",
        partitions=3,
        data_dir=tmp_path / "eddy-data",
        producer_idempotence="off",
        # Tansu holds every JoinGroup for half the session timeout: 2 s a join rather
        # than the default's 4.5 (heartbeats every 1.3 s keep a busy member in).
        session_timeout_ms=4000,
    )
    asyncio.run(create_topics(s.kafka, s.topics))
    return s


async def read_topic(
    settings: Settings, topic: str, within: float = 20.0, at_least: int = 0
) -> list[ConsumerRecord]:
    """Every record of ``topic``, once at least ``at_least`` have arrived (or ``within`` s)."""
    deadline = asyncio.get_running_loop().time() + within
    while True:
        records = await read_records(settings.kafka, topic, within)
        if len(records) >= at_least or asyncio.get_running_loop().time() > deadline:
            return records
        await asyncio.sleep(0.1)


@pytest.fixture
def registry_from_kafka(tmp_path: Path):
    """``rebuild(settings)``: the registry as Kafka holds it, mirrored into an empty
    directory (what another machine would see)."""
    from eddy.streams.state.registry_topic import KafkaRegistry

    def rebuild(settings: Settings):
        async def read():
            registry = KafkaRegistry(
                settings.kafka, settings.topics.prefix, tmp_path / "registry-from-kafka"
            )
            await registry.sync()
            await registry.close()
            return registry.mirror

        return asyncio.run(read())

    return rebuild
