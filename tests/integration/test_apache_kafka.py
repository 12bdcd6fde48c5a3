"""The same paths against Apache Kafka through testcontainers, when a Docker engine answers.

Machines without Docker (like the development machines here) skip this with the
reason; the container is built lazily inside the fixture so collection never
needs Docker.
"""

from __future__ import annotations

import asyncio
from collections.abc import Iterator

import pytest

from eddy.streams.kafka.admin import create_topics, topic_sizes
from eddy.streams.kafka.topics import Topics
from eddy.streams.ops import sources
from eddy.streams.ops.producer import ProduceOptions, produce
from eddy.streams.settings import Settings

# Confluent Platform 8.1 is Apache Kafka 4.1 (KRaft), the version docker-compose.yml runs
# as apache/kafka:4.1.0: testcontainers' KafkaContainer drives Confluent's images only.
KAFKA_IMAGE = "confluentinc/cp-kafka:8.1.0"


def _docker_answers() -> str | None:
    """None when a Docker engine answers a ping, else why not."""
    try:
        import docker

        docker.from_env(timeout=3).ping()
    except Exception as ex:  # noqa: BLE001 - any failure means "no usable Docker"
        return f"no Docker engine answers ({type(ex).__name__}: {ex})"
    return None


@pytest.fixture(scope="module")
def apache_kafka() -> Iterator[str]:
    why_not = _docker_answers()
    if why_not:
        pytest.skip(f"Apache Kafka via testcontainers skipped: {why_not}")
    from testcontainers.community.kafka import KafkaContainer

    with KafkaContainer(KAFKA_IMAGE).with_kraft() as kafka:
        yield kafka.get_bootstrap_server()


def test_topics_and_produce_on_apache_kafka(apache_kafka, tmp_path):
    settings = Settings(bootstrap=apache_kafka, topic_prefix="ak.", data_dir=tmp_path)
    assert set(asyncio.run(create_topics(settings.kafka, settings.topics)).values()) == {"created"}
    report = asyncio.run(
        produce(
            settings.kafka,
            settings.topics.prefix,
            sources.open_named("sea"),
            ProduceOptions(n=500, label_delay=20),
        )
    )
    sizes = asyncio.run(topic_sizes(settings))
    topics = Topics("ak.")
    assert sizes[topics.samples] == (3, 500)
    assert sizes[topics.labels] == (3, report.labels)


def test_takeover_on_apache_kafka(apache_kafka, tmp_path):
    """The takeover test (kill -9 a worker; another restores from the changelog) on Kafka."""
    # Imported here: at module level pytest would collect it a second time.
    from tests.integration.test_takeover import (
        test_a_worker_on_another_machine_takes_over_from_the_changelog as takeover,
    )

    settings = Settings(bootstrap=apache_kafka, topic_prefix="ak.", data_dir=tmp_path / "data")
    takeover(settings, tmp_path)
