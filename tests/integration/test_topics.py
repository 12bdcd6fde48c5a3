import asyncio
import time

import pytest

from eddy.streams.exceptions import BrokerError, TopicError
from eddy.streams.kafka.admin import create_topics, topic_sizes
from eddy.streams.kafka.topics import Topics
from eddy.streams.settings import Settings


def test_topics_are_created_with_explicit_partitions_and_idempotently(broker, tmp_path):
    s = Settings.build(
        bootstrap=broker.bootstrap, topic_prefix="tc1.", partitions=4, data_dir=tmp_path
    )
    first = asyncio.run(create_topics(s.kafka, s.topics))
    assert set(first.values()) == {"created"}
    again = asyncio.run(create_topics(s.kafka, s.topics))
    assert set(again.values()) == {"exists"}
    sizes = asyncio.run(topic_sizes(s.kafka, s.topics))
    topics = Topics("tc1.")
    assert sizes[topics.samples] == (4, 0)
    assert sizes[topics.labels] == (4, 0)
    assert sizes[topics.events] == (1, 0)
    assert sizes[topics.deadletter] == (1, 0)
    assert sizes[topics.changelog] == (4, 0) and sizes[topics.registry] == (1, 0)
    assert len(sizes) == 11


def test_existing_topics_with_other_partition_counts_are_an_error(broker, tmp_path):
    s = Settings.build(
        bootstrap=broker.bootstrap, topic_prefix="tc2.", partitions=2, data_dir=tmp_path
    )
    asyncio.run(create_topics(s.kafka, s.topics))
    with pytest.raises(TopicError, match="exists with 2 partitions but eddy needs 3"):
        bigger = s.with_overrides({"partitions": 3})
        asyncio.run(create_topics(bigger.kafka, bigger.topics))


def test_no_broker_configured_says_how_to_get_one(tmp_path):
    s = Settings.build(data_dir=tmp_path)
    with pytest.raises(BrokerError, match="eddy broker"):
        asyncio.run(create_topics(s.kafka, s.topics))


def test_unreachable_broker_is_a_clear_error(tmp_path):
    from eddy.streams.kafka.broker import free_port

    s = Settings.build(bootstrap=f"127.0.0.1:{free_port()}", data_dir=tmp_path)
    with pytest.raises(BrokerError, match="could not connect to Kafka"):
        asyncio.run(create_topics(s.kafka, s.topics))


def test_eddy_clients_never_create_topics_by_naming_them(broker, tmp_path):
    """Tansu (like Kafka by default) creates a topic a metadata request names, with
    its default partition count, unless the request says not to: eddy's clients say so."""
    from aiokafka.errors import KafkaError

    from eddy.streams.kafka.clients import start_admin, start_producer

    s = Settings.build(
        bootstrap=broker.bootstrap, topic_prefix="tc3.", partitions=1, data_dir=tmp_path
    )
    topics = Topics("tc3.")

    async def name_them() -> set[str]:
        producer = await start_producer(s.kafka)
        try:
            with pytest.raises((KafkaError, TimeoutError)):  # it waits for the topic to appear
                await asyncio.wait_for(producer.send_and_wait(topics.metrics, b"{}"), 5)
        finally:
            await producer.stop()
        admin = await start_admin(s.kafka)
        try:
            described = await admin.describe_topics([topics.samples])
            assert described[0]["error_code"] != 0
            return set(await admin.list_topics())
        finally:
            await admin.close()

    existing = asyncio.run(name_them())
    assert not {topics.samples, topics.metrics} & existing
    # So `eddy topics create` afterwards gets them with the partitions asked for.
    assert asyncio.run(topic_sizes(s.kafka, s.topics)) == {}
    assert set(asyncio.run(create_topics(s.kafka, s.topics)).values()) == {"created"}


def test_services_wait_for_missing_topics_and_commands_refuse_them(broker, tmp_path, caplog):
    from eddy.streams.kafka.admin import require_topics, wait_for_topics
    from eddy.streams.kafka.clients import start_producer

    s = Settings.build(
        bootstrap=broker.bootstrap, topic_prefix="tc4.", partitions=1, data_dir=tmp_path
    )
    names = Topics("tc4.").all()

    async def scenario() -> tuple[bool, bool]:
        producer = await start_producer(s.kafka)
        try:
            with pytest.raises(TopicError, match=r"tc4\.events.*`eddy topics create`"):
                await require_topics(producer, names)
            stop = asyncio.Event()
            stop.set()
            stopped = await wait_for_topics(producer, names, "test", stop)
            waiting = asyncio.create_task(wait_for_topics(producer, names, "test", asyncio.Event()))
            deadline = time.monotonic() + 30
            while "test: waiting for topic(s) tc4." not in caplog.text:  # it looked, said so
                assert not waiting.done() and time.monotonic() < deadline, caplog.text
                await asyncio.sleep(0.05)
            assert "`eddy topics create`" in caplog.text and not waiting.done()
            await create_topics(s.kafka, s.topics)
            found = await asyncio.wait_for(waiting, 30)
            await require_topics(producer, names)  # no error now
            return stopped, found
        finally:
            await producer.stop()

    assert asyncio.run(scenario()) == (False, True)


def test_eddy_changes_nothing_for_other_clients_in_the_process(broker, tmp_path):
    """eddy refuses auto-creation on its own clients only: a plain aiokafka producer in
    the same process behaves as aiokafka does (the broker creates what it names)."""
    from aiokafka import AIOKafkaProducer

    import eddy  # noqa: F401 - importing eddy must not patch aiokafka
    from eddy.streams.kafka.clients import start_producer

    s = Settings.build(bootstrap=broker.bootstrap, topic_prefix="tc5.", data_dir=tmp_path)

    async def scenario() -> None:
        ours = await start_producer(s.kafka)  # an eddy client exists in the process
        plain = AIOKafkaProducer(bootstrap_servers=broker.bootstrap)
        await plain.start()
        try:
            await asyncio.wait_for(plain.send_and_wait("tc5.theirs", b"x"), 30)
        finally:
            await plain.stop()
            await ours.stop()

    asyncio.run(scenario())
    assert "tc5.theirs" in asyncio.run(_list_topics(s))


async def _list_topics(s) -> set[str]:
    from eddy.streams.kafka.clients import start_admin

    admin = await start_admin(s.kafka)
    try:
        return set(await admin.list_topics())
    finally:
        await admin.close()
