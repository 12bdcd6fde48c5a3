"""`eddy produce`: samples and late, sometimes missing labels reach the broker intact."""

import asyncio
import os
import subprocess
import sys

import orjson

from eddy.streams.kafka.topics import Topics
from eddy.streams.ops import sources
from eddy.streams.ops.producer import ProduceOptions, produce
from eddy.streams.wire.codec import decode_label, decode_sample
from tests.integration.conftest import read_topic


def test_labels_arrive_late_and_dropped_ones_are_counted(settings):
    settings = settings.with_overrides({"topic_prefix": settings.topics.prefix + "one."})
    settings = settings.with_overrides({"partitions": 1})
    from eddy.streams.kafka.admin import create_topics

    asyncio.run(create_topics(settings.kafka, settings.topics))
    options = ProduceOptions(n=2000, label_delay=50, label_drop=0.05, seed=3, id_prefix="run")
    report = asyncio.run(
        produce(settings.kafka, settings.topics.prefix, sources.open_named("sea", seed=3), options)
    )
    assert report.samples == 2000
    assert report.labels + report.labels_dropped == 2000
    assert 50 <= report.labels_dropped <= 150  # 5% of 2000, seeded

    topics = Topics(settings.topics.prefix)
    samples = asyncio.run(read_topic(settings, topics.samples, at_least=2000))
    labels = asyncio.run(read_topic(settings, topics.labels, at_least=report.labels))
    assert len(samples) == 2000
    assert len(labels) == report.labels
    decoded = [decode_sample(r.value) for r in samples]
    assert [s.id for s in decoded] == [f"run-{i:09d}" for i in range(2000)]
    assert all(r.key == s.id.encode() for r, s in zip(samples, decoded, strict=True))
    # each label was sent after the 50 samples that followed its own sample
    sent_before = {s.id: i for i, s in enumerate(decoded)}
    label_ids = [decode_label(r.value).id for r in labels]
    assert len(set(label_ids)) == len(label_ids)
    assert set(label_ids) <= set(sent_before)
    positions = [sent_before[i] for i in label_ids]
    assert positions == sorted(positions)  # labels keep the samples' order
    for record, i in zip(labels, positions, strict=True):
        # sent only once the 50 samples after its own were sent
        assert record.timestamp >= samples[min(i + 50, 1999)].timestamp


def test_same_key_puts_sample_and_label_on_the_same_partition(settings):
    options = ProduceOptions(n=300, label_delay=10, seed=1)
    asyncio.run(
        produce(
            settings.kafka, settings.topics.prefix, sources.open_named("agrawal", seed=1), options
        )
    )
    topics = Topics(settings.topics.prefix)
    samples = asyncio.run(read_topic(settings, topics.samples, at_least=300))
    labels = asyncio.run(read_topic(settings, topics.labels, at_least=300))
    where = {r.key: r.partition for r in samples}
    assert len(where) == 300
    assert {r.partition for r in samples} == {0, 1, 2}
    assert all(where[r.key] == r.partition for r in labels)


def test_inline_labels_travel_in_the_sample(settings):
    options = ProduceOptions(n=20, inline_labels=True)
    report = asyncio.run(
        produce(settings.kafka, settings.topics.prefix, sources.open_named("phishing"), options)
    )
    assert report.labels == 0
    samples = asyncio.run(read_topic(settings, Topics(settings.topics.prefix).samples, at_least=20))
    assert all(decode_sample(r.value).label is not None for r in samples)


def test_the_produce_command_sends_a_file(settings, tmp_path):
    data = tmp_path / "rows.csv"
    data.write_text("a,b,y\n" + "".join(f"{i},{i * 2},{i % 3}\n" for i in range(100)))
    result = subprocess.run(
        [
            sys.executable,
            "-m",
            "eddy.streams.ops.cli",
            "produce",
            "--file",
            str(data),
            "--target",
            "y",
            "--bootstrap",
            settings.kafka.bootstrap,
            "--topic-prefix",
            settings.topics.prefix,
            "--no-progress",
            "--label-delay",
            "5",
        ],
        capture_output=True,
        text=True,
        timeout=120,
        env=os.environ | {"COLUMNS": "200"},
    )
    assert result.returncode == 0, result.stderr
    assert "sent 100 samples and 100 labels" in result.stdout
    labels = asyncio.run(read_topic(settings, Topics(settings.topics.prefix).labels, at_least=100))
    assert sorted(orjson.loads(r.value)["label"] for r in labels) == sorted(
        i % 3 for i in range(100)
    )


def test_the_produce_command_refuses_an_endless_stream_without_n(settings):
    result = subprocess.run(
        [
            sys.executable,
            "-m",
            "eddy.streams.ops.cli",
            "produce",
            "--dataset",
            "sea",
            "--bootstrap",
            settings.kafka.bootstrap,
        ],
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert result.returncode == 2
    assert "sea is endless: give --n" in result.stderr
