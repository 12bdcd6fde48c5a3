"""One owner per stream, replicas elsewhere: samples that land in a worker that does not
own their stream are predicted by a replica of the owner's model, a bounded time behind."""

from __future__ import annotations

import asyncio
import itertools

import numpy as np
import orjson

from eddy.streams.kafka.admin import create_topics
from eddy.streams.kafka.clients import read_records
from eddy.streams.kafka.partitioning import partition_of
from eddy.streams.kafka.topics import Topics
from eddy.streams.observe.dashboard import read_registry, sum_samples
from eddy.streams.ops import sources
from eddy.streams.ops.producer import ProduceOptions, produce
from tests.integration.worker_helpers import learned, running_worker, wait_for

N = 4_000
MAX_STALENESS_MS = 1_000


def test_samples_in_another_process_are_predicted_by_a_replica_within_the_bound(settings):
    settings = settings.with_overrides(
        {
            "topic_prefix": settings.topics.prefix + "rep.",
            "partitions": 2,
            "model": "logreg",
            "max_staleness_ms": MAX_STALENESS_MS,
            "signing_key": "replica-test-key",  # one key for both machines (README)
        }
    )
    asyncio.run(create_topics(settings.kafka, settings.topics))
    owner_partition = partition_of("s0", 2)

    async def scenario():
        async with running_worker(settings) as a:
            await wait_for(lambda: len(a.agent.partitions) == 2, 60, "A holding both partitions")
            async with running_worker(
                settings.with_overrides({"data_dir": settings.state.data_dir / "b"})
            ) as b:
                await wait_for(
                    lambda: len(a.agent.partitions) == 1 and len(b.agent.partitions) == 1,
                    90,
                    "A and B holding a partition each",
                )
                owner, other = (a, b) if owner_partition in a.agent.partitions else (b, a)
                await produce(
                    settings.kafka,
                    settings.topics.prefix,
                    itertools.islice(sources.open_named("sea", seed=3), N),
                    ProduceOptions(n=N, label_delay=200, rate=1_000, stream="s0"),
                )
                await wait_for(lambda: learned(owner, "s0") == N, 120, f"s0 learning all {N}")
                assert other.stream("s0") is None  # exactly one owner
                return read_registry(other.registry)

    other_metrics = asyncio.run(scenario())
    records = asyncio.run(read_records(settings.kafka, Topics(settings.topics.prefix).predictions))
    assert len(records) == N  # every sample predicted once, whichever process holds it
    elsewhere = [orjson.loads(r.value) for r in records if r.partition != owner_partition]
    assert len(elsewhere) > N // 4
    by_replica = [p for p in elsewhere if p["model_examples"] > 0]
    # Before the owner's first snapshot arrives a blank model answers; after, the replica.
    assert len(by_replica) >= 0.8 * len(elsewhere), (len(by_replica), len(elsewhere))
    staleness = [p["staleness_ms"] for p in by_replica]
    assert np.percentile(staleness, 95) <= MAX_STALENESS_MS, np.percentile(staleness, 95)
    assert max(staleness) <= 3 * MAX_STALENESS_MS, max(staleness)
    # The replica keeps up: its examples count grows over the run.
    assert max(p["model_examples"] for p in by_replica) > N // 2
    # The other process exports the staleness it served with.
    assert sum_samples(other_metrics, "eddy_prediction_staleness_seconds_count", stream="s0") > 0
