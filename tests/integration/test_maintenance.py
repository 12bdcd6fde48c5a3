"""The maintenance loop end to end: drift → retrain → new version → int8 export → hot swap."""

from __future__ import annotations

import asyncio

from eddy.consumers.exporter import Exporter
from eddy.consumers.hotswap import HotSwapClient
from eddy.consumers.retrainer import Retrainer
from eddy.streams.kafka.admin import create_topics
from eddy.streams.kafka.topics import Topics
from eddy.streams.ops import sources
from eddy.streams.ops.producer import ProduceOptions, produce
from eddy.streams.wire.codec import decode_event, schema_errors
from tests.integration.conftest import read_topic
from tests.integration.worker_helpers import (
    request_manual_retrain,
    running_consumer,
    running_worker,
    wait_for,
)

N, DRIFT_AT = 20_000, 10_000


def test_drift_to_served_int8_model(settings, registry_from_kafka):
    settings = settings.with_overrides(
        {
            "topic_prefix": settings.topics.prefix + "m.",
            "partitions": 1,
            "retrain_epochs": 20,
            "retrain_folds": 2,
        }
    )
    asyncio.run(create_topics(settings.kafka, settings.topics))

    async def scenario():
        await request_manual_retrain(settings, 4000, 9000)
        stream = sources.open_named("sea", seed=4, variant=0, drift_at=DRIFT_AT, drift_to=3)
        async with (
            running_worker(settings) as worker,
            running_consumer(settings, Retrainer),
            running_consumer(settings, Exporter),
        ):
            client = HotSwapClient.from_settings(settings, "default")
            await client.start()
            try:
                await produce(
                    settings.kafka,
                    settings.topics.prefix,
                    stream,
                    ProduceOptions(n=N, label_delay=0),
                )
                # v0001 is served only if its export ends before v0002 is promoted; the
                # client serves the champion as it stands, so only v0002 is certain.
                await wait_for(lambda: client.version == "v0002", 300, "v0002 served after drift")
                served_prediction = client.predict([{"0": 5.0, "1": 4.2, "2": 1.0}])
            finally:
                await client.stop()
            await wait_for(
                lambda: any(o[1] == "v0002" for o in worker.champions.outcomes), 30, "adoption"
            )
            learned = worker.stream("default").learned
            outcomes = worker.champions.outcomes
        return client, served_prediction, learned, outcomes

    client, served_prediction, learned, outcomes = asyncio.run(scenario())

    registry = registry_from_kafka(settings)
    # scaled-logreg cannot take network weights: the learner keeps its own, and says so
    assert ("default", "v0002", False) in [o[:3] for o in outcomes]
    assert learned == N
    assert served_prediction[0] in (True, False)
    swapped = [v for _, v, _ in client.swaps]
    assert swapped[-1] == "v0002" and swapped == sorted(set(swapped)), swapped
    assert client.refused == []

    v1, v2 = registry.get("default", "v0001"), registry.get("default", "v0002")
    assert schema_errors("model_card", v1.card) == []
    assert schema_errors("model_card", v2.card) == []
    assert registry.aliases("default")["champion"] == "v0002"
    assert v1.card["trigger"]["reason"] == "manual" and v1.card["parent_version"] is None
    assert v2.card["parent_version"] == "v0001"
    assert v2.card["trigger"]["reason"] == "drift"
    window = v2.card["window"]["offsets"][0]
    assert window["start"] > DRIFT_AT - 200  # trained on what came after the drift
    comparison = v2.card["comparison"]
    assert comparison["test"] == "mcnemar" and comparison["p_value"] < 0.05
    assert comparison["candidate"] > comparison["champion"]  # beats the pre-drift champion
    q = v2.card["quantization"]
    assert q["size_ratio"] >= 3.0
    assert abs(q["accuracy_delta"]) <= 0.01
    assert all(registry.verify("default", "v0002").values())
    actions = [(e["action"], e["version"]) for e in registry.history("default")]
    assert ("retrain", "v0002") in actions and ("promote", "v0002") in actions
    assert ("export", "v0002") in actions
    assert ("adopt", "v0002") in actions

    events = [
        decode_event(r.value)
        for r in asyncio.run(
            read_topic(settings, Topics(settings.topics.prefix).events, at_least=8)
        )
    ]
    drift = next(
        e
        for e in events
        if e.type == "drift.detected"
        and e.data["level"] == "drift"
        and e.data["position"]["sample_count"] > DRIFT_AT
    )
    updated = next(e for e in events if e.type == "model.updated" and e.data["version"] == "v0002")
    exported = next(
        e for e in events if e.type == "model.exported" and e.data["version"] == "v0002"
    )
    assert exported.data["servable"] is True
    swapped_at = {v: at for _, v, at in client.swaps}["v0002"]
    timeline = {
        "drift.detected": _ts(drift.time),
        "model.updated": _ts(updated.time),
        "model.exported": _ts(exported.time),
        "served": swapped_at,
    }
    start = timeline["drift.detected"]
    print(
        "timeline (s after drift.detected):", {k: round(v - start, 2) for k, v in timeline.items()}
    )
    print("comparison:", comparison)
    print(
        "quantization:",
        {
            k: q[k]
            for k in (
                "size_ratio",
                "accuracy_delta",
                "fp32_batch1_us",
                "int8_batch1_us",
                "int8_batch256_per_s",
            )
        },
    )


def _ts(rfc3339: str) -> float:
    from datetime import datetime

    return datetime.fromisoformat(rfc3339.replace("Z", "+00:00")).timestamp()
