"""Tuning and compression in the maintenance loop, end to end on a drifted stream:
search → register → distill/prune/quantize → gate → hot swap."""

from __future__ import annotations

import asyncio
import time

import orjson
import torch

from eddy.consumers.exporter import INT8, TRAIN, VARIANT, Exporter
from eddy.consumers.hotswap import HotSwapClient
from eddy.consumers.retrainer import Retrainer, search_space
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

N, BEFORE, DRIFT_AT, TRIALS = 10_000, 4500, 5000, 4
VARIANTS = [
    "teacher-fp32",
    "teacher-int8",
    "student-fp32",
    "student-int8",
    "structured-25-int8",
    "structured-50-int8",
    "structured-75-int8",
]


def test_search_compress_gate_and_hot_swap_on_a_drifted_stream(settings, registry_from_kafka):
    torch.set_num_threads(1)
    settings = settings.with_overrides(
        {
            "topic_prefix": settings.topics.prefix + "tune.",
            "partitions": 1,
            "retrain_window": 2000,
            "retrain_epochs": 10,
            "retrain_hidden": (128, 128),
            "retrain_trials": TRIALS,
            "retrain_budget_s": 30.0,
            # a 400-row holdout: a 1% gate would be 4 examples; this test is about the loop
            "export_max_delta": 0.05,
        }
    )
    asyncio.run(create_topics(settings.kafka, settings.topics))
    started = time.monotonic()

    async def scenario():
        await request_manual_retrain(settings, 1000, 4000)
        stream = sources.open_named("sea", seed=4, variant=0, drift_at=DRIFT_AT, drift_to=3)
        async with (
            running_worker(settings),
            running_consumer(settings, Retrainer),
            running_consumer(settings, Exporter),
        ):
            client = HotSwapClient.from_settings(settings, "default")
            await client.start()
            try:
                # before the drift: the first champion is trained, exported and served
                await produce(
                    settings.kafka, settings.topics.prefix, stream, ProduceOptions(n=BEFORE)
                )
                await wait_for(lambda: client.version == "v0001", 120, "v0001 served")
                # the rest of the same stream: the drift, a retrain, its export and the swap
                await produce(
                    settings.kafka, settings.topics.prefix, stream, ProduceOptions(n=N - BEFORE)
                )
                await wait_for(lambda: client.version == "v0002", 180, "v0002 served after drift")
                prediction = client.predict([{"0": 5.0, "1": 4.2, "2": 1.0}])
            finally:
                await client.stop()
        return client, prediction

    client, prediction = asyncio.run(scenario())
    loop_seconds = time.monotonic() - started

    registry = registry_from_kafka(settings)
    assert prediction[0] in (True, False)
    assert [v for _, v, _ in client.swaps] == ["v0001", "v0002"] and client.refused == []
    assert registry.aliases("default")["champion"] == "v0002"
    v2 = registry.get("default", "v0002")
    card = v2.card
    assert schema_errors("model_card", card) == []
    assert card["trigger"]["reason"] == "drift" and card["parent_version"] == "v0001"
    assert all(registry.verify("default", "v0002").values())

    # the search: its space, every trial's score, the chosen values, the candidate that won
    search = card["search"]
    assert search["space"] == search_space(settings.maintenance).as_dict()
    assert len(search["trials"]) == TRIALS and search["stopped_by"] == "trials"
    for trial in search["trials"]:
        assert trial["state"] in ("complete", "pruned"), trial
        assert (trial["score"] is None) == (trial["state"] == "pruned")
        assert {"hidden", "epochs", "lr", "weight_decay"} == set(trial["params"])
    assert search["best_score"] == search["trials"][search["best_trial"]]["score"]
    assert search["warm_start"] is True
    assert set(search["candidates"]) == {"warm", "scratch", "search"}
    assert search["chosen"] == card["hyperparameters"]["strategy"]
    assert search["candidates"][search["chosen"]] == max(search["candidates"].values())
    best = search["best_params"]
    assert set(best) >= {"hidden", "epochs", "lr", "weight_decay"}

    # compression: every variant measured, the smallest passing one served
    compression, q, gate = card["compression"], card["quantization"], card["export_gate"]
    rows = {row["name"]: row for row in compression["variants"]}
    assert list(rows) == VARIANTS
    for row in rows.values():
        assert row["bytes"] > 0 and row["batch1_us"] > 0 and row["batch256_per_s"] > 0
    chosen = compression["chosen"]
    passing = [row for row in rows.values() if row["passed"]]
    assert chosen == min(passing, key=lambda row: row["bytes"])["name"]
    assert gate["passed"] is True and q["variant"] == chosen
    assert q["size_ratio"] == rows[chosen]["size_ratio"] >= settings.maintenance.export_min_ratio
    assert -q["accuracy_delta"] <= settings.maintenance.export_max_delta
    assert all(name in compression["table"] for name in VARIANTS)
    assert q["int8_bytes"] == card["artifacts"][INT8]["size_bytes"]
    assert (VARIANT in card["artifacts"]) == (chosen != "teacher-int8")
    assert TRAIN in card["artifacts"]

    # the maintenance log: how long the search took; which variant was exported
    entries = {(e["action"], e["version"]): e for e in registry.history("default")}
    retrain = entries[("retrain", "v0002")]
    assert retrain["search_seconds"] == round(search["seconds"], 3) > 0
    assert retrain["search_trials"] == TRIALS and retrain["candidate"] == search["chosen"]
    assert entries[("export", "v0002")]["variant"] == chosen

    events = [
        decode_event(r.value)
        for r in asyncio.run(
            read_topic(settings, Topics(settings.topics.prefix).events, at_least=8)
        )
    ]
    exported = next(
        e for e in events if e.type == "model.exported" and e.data["version"] == "v0002"
    )
    assert exported.data["servable"] is True and exported.data["variant"] == chosen
    raw = next(
        orjson.loads(r.value)
        for r in asyncio.run(read_topic(settings, Topics(settings.topics.prefix).events))
        if b"model.exported" in r.value and b'"v0002"' in r.value
    )
    assert schema_errors("model.exported", raw) == []

    print(
        f"loop: {loop_seconds:.1f} s; search {search['seconds']:.1f} s "
        f"({search['n_complete']} complete, {search['n_pruned']} pruned), chosen "
        f"{search['chosen']} {card['hyperparameters']['hidden']}; "
        f"candidates {search['candidates']}"
    )
    print(compression["table"])
