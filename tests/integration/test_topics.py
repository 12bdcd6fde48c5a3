import asyncio

import pytest

from streams.exceptions import BrokerError, TopicError
from streams.settings import Settings
from streams.topics import Topics, create_topics, topic_sizes


def test_topics_are_created_with_explicit_partitions_and_idempotently(broker, tmp_path):
    s = Settings(bootstrap=broker.bootstrap, topic_prefix="tc1.", partitions=4, data_dir=tmp_path)
    first = asyncio.run(create_topics(s))
    assert set(first.values()) == {"created"}
    again = asyncio.run(create_topics(s))
    assert set(again.values()) == {"exists"}
    sizes = asyncio.run(topic_sizes(s))
    topics = Topics("tc1.")
    assert sizes[topics.samples] == (4, 0)
    assert sizes[topics.labels] == (4, 0)
    assert sizes[topics.events] == (1, 0)
    assert sizes[topics.deadletter] == (1, 0)
    assert len(sizes) == 7


def test_existing_topics_with_other_partition_counts_are_an_error(broker, tmp_path):
    s = Settings(bootstrap=broker.bootstrap, topic_prefix="tc2.", partitions=2, data_dir=tmp_path)
    asyncio.run(create_topics(s))
    with pytest.raises(TopicError, match="exists with 2 partitions but eddy needs 3"):
        asyncio.run(create_topics(s.with_overrides({"partitions": 3})))


def test_no_broker_configured_says_how_to_get_one(tmp_path):
    s = Settings(data_dir=tmp_path)
    with pytest.raises(BrokerError, match="eddy broker"):
        asyncio.run(create_topics(s))


def test_unreachable_broker_is_a_clear_error(tmp_path):
    from streams.broker import free_port

    s = Settings(bootstrap=f"127.0.0.1:{free_port()}", data_dir=tmp_path)
    with pytest.raises(BrokerError, match="could not connect to Kafka"):
        asyncio.run(create_topics(s))
