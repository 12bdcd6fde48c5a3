"""The retrainer's search and the exporter's compression, without a broker.

The consumers' Kafka parts are left out: ``Retrainer._train`` and ``Exporter._export``
run on a window of SEA examples with the registry replaced by what they read from it.
"""

from __future__ import annotations

import itertools
import json
from pathlib import Path
from types import SimpleNamespace
from typing import Any

import numpy as np
import pytest
import torch

from eddy.consumers.exporter import (
    FP32,
    INT8,
    TRAIN,
    VARIANT,
    Exporter,
    check_same_interface,
    compressing,
    ladder_levels,
    quantization_of,
    student_plan,
)
from eddy.consumers.retrainer import Retrainer, choose, search_log, search_space, startup_trials
from eddy.models.maintain.batch import BatchModel, TrainParams, train, vectorize
from eddy.models.maintain.compress import compress
from eddy.models.maintain.export import read_train_window, run, session, train_window_bytes
from eddy.models.maintain.registry import RegistryError
from eddy.streams.exceptions import ConfigError
from eddy.streams.ops import sources
from eddy.streams.ops.maintenance_cli import _tables
from eddy.streams.settings import Settings, settings_env
from eddy.streams.wire.codec import ControlEvent, schema_errors

ALL_VARIANTS = [
    "teacher-fp32",
    "teacher-int8",
    "student-fp32",
    "student-int8",
    "structured-25-int8",
    "structured-50-int8",
    "structured-75-int8",
]
SMALL = {
    "retrain_epochs": 8,
    "retrain_hidden": (64, 64),
    "retrain_trials": 4,
    "retrain_budget_s": 60.0,
    "retrain_folds": 3,
}


@pytest.fixture(scope="module", autouse=True)
def one_thread():
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(threads)


def sea_window(n: int, start: int) -> list[tuple[Any, Any]]:
    """``n`` (record, example) pairs of a SEA stream that drifts at 2,000, from ``start``."""
    stream = sources.open_named("sea", seed=7, variant=0, drift_at=2000, drift_to=3)
    out = []
    for i, (x, y) in enumerate(itertools.islice(stream, start, start + n)):
        record = SimpleNamespace(offset=start + i, timestamp=1_700_000_000_000 + start + i)
        out.append((record, SimpleNamespace(features=x, label=y)))
    return out


def retrainer(champion: BatchModel | None = None, **overrides: Any) -> Retrainer:
    """A retrainer with no Kafka: ``_train`` reads only settings, params and the champion."""
    r = object.__new__(Retrainer)
    r.settings = Settings.build(**(SMALL | overrides))
    m = r.settings.maintenance
    r.params = TrainParams(hidden=tuple(m.retrain_hidden), epochs=m.retrain_epochs)
    r._champion = lambda model: ("v0001", champion) if champion else None
    r._task = lambda model, champ: "binary"
    return r


EVENT = ControlEvent(
    "retrain.requested",
    "e1",
    "eddy/test",
    "2026-01-01T00:00:00Z",
    {"stream": "default", "reason": "manual"},
)


def train_card(r: Retrainer, examples: list[Any]) -> tuple[dict[str, Any], dict[str, bytes]]:
    window = {"topic": "t.examples", "partition": 0, "examples": examples}
    card, artifacts, _ = r._train("default", EVENT, window)
    return json.loads(json.dumps(card)), artifacts  # what the registry stores


@pytest.fixture(scope="module")
def first(one_thread) -> tuple[dict[str, Any], dict[str, bytes]]:
    """A first version (no champion) on 1,500 pre-drift examples, with a 4-trial search."""
    return train_card(retrainer(), sea_window(1500, 0))


# -- settings ------------------------------------------------------------------------------------


def test_settings_defaults_parsing_and_off_switches():
    m = Settings().maintenance
    assert (m.retrain_trials, m.retrain_budget_s) == (20, 20.0)
    assert m.export_distill and m.export_ladder == (0.25, 0.5, 0.75)
    assert m.export_student_size == 0.25
    assert compressing(m)
    env = {"EDDY_RETRAIN_TRIALS": "0", "EDDY_EXPORT_DISTILL": "off", "EDDY_EXPORT_LADDER": "0"}
    off = Settings.from_env(env)
    assert off.maintenance.retrain_trials == 0 and not compressing(off.maintenance)
    # "off" survives the trip to a child process's environment (an empty value would not)
    assert Settings.from_env(settings_env(off)).maintenance == off.maintenance
    ladder = Settings.from_env({"EDDY_EXPORT_LADDER": "0.5, 0.25,0,0.5"}).maintenance.export_ladder
    assert ladder_levels(ladder) == (0.25, 0.5)
    assert compressing(Settings.from_env({"EDDY_EXPORT_DISTILL": "off"}).maintenance)
    with pytest.raises(ConfigError, match=r"EDDY_EXPORT_LADDER.*fraction in"):
        Settings.from_env({"EDDY_EXPORT_LADDER": "0.5,1.5"})
    with pytest.raises(ConfigError, match="EDDY_RETRAIN_BUDGET_S"):
        Settings.from_env({"EDDY_RETRAIN_BUDGET_S": "0"})


# -- the retrainer's helpers ---------------------------------------------------------------------


def test_search_space_startup_trials_choose_and_log():
    space = search_space(Settings.build(retrain_epochs=12).maintenance)
    assert space.epochs == (5, 12) and space.depth == (2, 3) and min(space.widths) == 64
    assert search_space(Settings.build(retrain_epochs=3).maintenance).epochs == (3, 3)
    assert [startup_trials(n) for n in (1, 4, 12, 30)] == [1, 1, 4, 5]
    assert choose({"warm": 0.9, "scratch": 0.95, "search": 0.95}) == "scratch"  # tie: fixed
    assert choose({"warm": 0.9, "search": 0.91}) == "search"
    assert choose({}) == "scratch"
    assert search_log({"hyperparameters": {"strategy": "warm"}}) == {}


def test_train_window_artifact_round_trip_and_cap():
    matrix = np.arange(30, dtype=np.float32).reshape(10, 3)
    x, names = read_train_window(train_window_bytes(matrix, ["a", "b", "c=x"]))
    assert names == ["a", "b", "c=x"] and np.array_equal(x, matrix) and x.dtype == np.float32
    x, _ = read_train_window(train_window_bytes(matrix, ["a", "b", "c"], max_rows=4))
    assert [int(r[0]) for r in x] == [0, 9, 18, 27]  # evenly spaced, in order, first and last
    with pytest.raises(ValueError, match="one column per feature name"):
        train_window_bytes(matrix, ["a"])


def test_retrain_card_records_the_search_and_stores_the_training_window(first):
    card, artifacts = first
    assert (
        schema_errors(
            "model_card",
            card
            | {
                "model": "default",
                "version": "v0001",
                "created": "2026-01-01T00:00:00Z",
                "artifacts": {},
            },
        )
        == []
    )
    search = card["search"]
    assert search["space"] == search_space(Settings.build(**SMALL).maintenance).as_dict()
    assert len(search["trials"]) == 4 and search["stopped_by"] == "trials"
    for trial in search["trials"]:
        assert trial["state"] in ("complete", "pruned")
        assert (trial["score"] is None) == (trial["state"] == "pruned")
        assert set(trial["params"]) == {"hidden", "epochs", "lr", "weight_decay"}
    best = search["trials"][search["best_trial"]]
    assert best["score"] == search["best_score"] == card["metrics"]["cv_search"]
    assert search["warm_start"] is False  # no champion yet
    assert set(search["candidates"]) == {"scratch", "search"}  # warm needs a champion
    assert search["chosen"] == card["hyperparameters"]["strategy"] == choose(search["candidates"])
    chosen = card["hyperparameters"]
    if chosen["strategy"] == "search":
        assert {k: chosen[k] for k in best["params"]} == best["params"]
    assert BatchModel.from_bytes(artifacts["model.pt"]).params.hidden == tuple(chosen["hidden"])
    log = search_log(card)
    assert log["search_seconds"] == round(search["seconds"], 3) > 0
    assert log["search_trials"] == 4 and log["candidate"] == chosen["strategy"]
    x, names = read_train_window(artifacts[TRAIN])
    assert x.shape == (card["window"]["train"], 3) and names == ["0", "1", "2"]
    assert len(artifacts[TRAIN]) < 50_000
    title, text = _tables(card)[0]
    assert title.startswith("hyperparameter search (") and f"chosen: {chosen['strategy']}" in text


def test_search_is_reproducible_and_fine_tunes_the_champion(first):
    card, artifacts = first
    again, _ = train_card(retrainer(), sea_window(1500, 0))
    assert [(t["params"], t["score"], t["state"]) for t in again["search"]["trials"]] == [
        (t["params"], t["score"], t["state"]) for t in card["search"]["trials"]
    ]
    champion = BatchModel.from_bytes(artifacts["model.pt"])
    after, _ = train_card(retrainer(champion), sea_window(1500, 2200))
    search = after["search"]
    assert search["warm_start"] is True
    assert set(search["candidates"]) == {"warm", "scratch", "search"}
    assert after["metrics"]["cv_warm"] == search["candidates"]["warm"]


def test_no_search_keeps_the_fixed_candidates():
    card, _ = train_card(retrainer(retrain_trials=0), sea_window(600, 0))
    assert "search" not in card and "cv_search" not in card["metrics"]
    params = TrainParams(hidden=(64, 64), epochs=8).as_dict()
    assert {k: card["hyperparameters"][k] for k in params} == params
    assert card["hyperparameters"]["strategy"] == "scratch"


def test_a_search_that_cannot_run_is_skipped_not_fatal():
    # a budget spent before the first fold: every trial stops, none completes
    r = retrainer(retrain_trials=2, retrain_budget_s=1e-6)
    card, _ = train_card(r, sea_window(600, 0))
    assert "no trial completed" in card["search"]["skipped"] and card["search"]["trials"] == []
    assert card["hyperparameters"]["strategy"] == "scratch"
    assert _tables(card)[0][0] == "hyperparameter search: skipped"


# -- the exporter's helpers ----------------------------------------------------------------------


@pytest.fixture(scope="module")
def teacher(one_thread) -> tuple[BatchModel, np.ndarray, np.ndarray, list[Any]]:
    examples = sea_window(1500, 2200)
    matrix, names = vectorize([e.features for _, e in examples])
    labels = [e.label for _, e in examples]
    model = train(matrix[:1200], labels[:1200], "binary", names, TrainParams(hidden=(128, 128)))
    return model, matrix[:1200], matrix[1200:], labels[1200:]


class FakeVersion:
    """What ``Exporter._export`` reads of a registered version."""

    def __init__(self, root: Path, artifacts: dict[str, bytes]) -> None:
        self.model, self.version, self.root = "default", "v0002", root
        self.card = {"artifacts": {name: {} for name in artifacts}}
        for name, data in artifacts.items():
            (root / name).write_bytes(data)

    def artifact(self, name: str) -> Path:
        return self.root / name


def export(tmp_path: Path, teacher: Any, train_npz: bool = True, **overrides: Any) -> Any:
    model, train_x, hold_x, hold_y = teacher
    artifacts = {
        "model.pt": model.to_bytes(),
        "holdout.json": json.dumps({"X": hold_x.tolist(), "y": hold_y}).encode(),
    }
    if train_npz:
        artifacts[TRAIN] = train_window_bytes(train_x, model.feature_names)
    exporter = object.__new__(Exporter)
    exporter.settings = Settings.build(**overrides)
    return exporter._export(FakeVersion(tmp_path, artifacts))


def test_export_serves_the_smallest_passing_variant(tmp_path, teacher):
    updates, artifacts = export(tmp_path, teacher, export_min_ratio=2.0, export_max_delta=0.02)
    compression, q, gate = updates["compression"], updates["quantization"], updates["export_gate"]
    rows = {row["name"]: row for row in compression["variants"]}
    assert list(rows) == ALL_VARIANTS
    passing = [row for row in rows.values() if row["passed"]]
    assert gate["passed"] is True and passing
    chosen = min(passing, key=lambda row: row["bytes"])
    assert compression["chosen"] == compression["served"] == q["variant"] == chosen["name"]
    assert all(name in compression["table"] for name in ALL_VARIANTS)
    # the quantization fields other code reads: the served variant against teacher fp32
    assert q["size_ratio"] == chosen["size_ratio"] >= 2.0
    assert q["accuracy_delta"] == chosen["delta"] >= -0.02
    assert q["int8_bytes"] == chosen["bytes"] == len(artifacts[INT8])
    assert q["fp32_bytes"] == rows["teacher-fp32"]["bytes"]
    assert q["int8_batch1_us"] == chosen["batch1_us"]
    assert q["fp32_batch256_per_s"] == rows["teacher-fp32"]["batch256_per_s"]
    # a student or pruned variant is stored too; it reads like the teacher (model.pt)
    model, _, hold_x, hold_y = teacher
    assert (VARIANT in artifacts) == (chosen["name"] != "teacher-int8")
    served = BatchModel.from_bytes(artifacts[VARIANT]) if VARIANT in artifacts else model
    assert served.feature_names == model.feature_names and served.classes == model.classes
    assert list(served.params.hidden) == chosen["hidden"]
    out = run(session(artifacts[INT8]), hold_x)
    accuracy = np.mean([model.classes[i] == y for i, y in zip(out.argmax(1), hold_y, strict=True)])
    assert accuracy == pytest.approx(q["int8_accuracy"])
    assert run(session(artifacts[FP32]), hold_x[:1]).shape == (1, 2)
    assert _tables({"compression": compression})[0][0] == f"compression (served: {chosen['name']}):"


def test_export_with_nothing_passing_keeps_teacher_int8_unservable(tmp_path, teacher):
    updates, artifacts = export(
        tmp_path, teacher, export_min_ratio=100.0, export_ladder=(0.5,), export_distill=False
    )
    assert [r["name"] for r in updates["compression"]["variants"]] == [
        "teacher-fp32",
        "teacher-int8",
        "structured-50-int8",
    ]
    assert updates["export_gate"]["passed"] is False
    assert updates["export_gate"]["reason"].startswith("no int8 variant passes the gate")
    assert updates["quantization"]["variant"] == "teacher-int8"
    assert updates["compression"]["chosen"] is None
    assert VARIANT not in artifacts
    assert updates["quantization"]["int8_bytes"] == len(artifacts[INT8])


def test_export_prune_adds_a_magnitude_variant(tmp_path, teacher):
    updates, _ = export(
        tmp_path,
        teacher,
        export_prune=0.3,
        export_ladder=(0.5,),
        export_distill=False,
        export_min_ratio=2.0,
    )
    names = [r["name"] for r in updates["compression"]["variants"]]
    assert names == ["teacher-fp32", "teacher-int8", "structured-50-int8", "magnitude-30-int8"]
    assert updates["compression"]["student"] == "no student: EDDY_EXPORT_DISTILL is off"


def test_export_off_switches_and_old_versions_keep_the_models_own_int8(tmp_path, teacher):
    updates, artifacts = export(tmp_path, teacher, export_distill=False, export_ladder=(0.0,))
    assert "compression" not in updates and "variant" not in updates["quantization"]
    assert set(artifacts) == {FP32, INT8}
    assert updates["quantization"]["pruned"] == 0.0
    assert set(updates["export_gate"]) == {"passed", "reason"}
    updates, _ = export(tmp_path, teacher, train_npz=False)
    assert "has no train.npz" in updates["compression"]["skipped"]
    assert _tables({"compression": updates["compression"]})[0][0] == "compression: skipped"


def test_student_plan_and_the_interface_check(teacher):
    model = teacher[0]
    plan, note = student_plan(model, 0.25)
    assert plan is not None and plan.hidden is not None and "at most 0.25" in note
    tiny = train(
        teacher[1],
        [bool(v > 5) for v in teacher[1][:, 0]],
        "binary",
        model.feature_names,
        TrainParams(hidden=(8,), epochs=1),
    )
    plan, note = student_plan(tiny, 0.25)
    assert plan is None and note.startswith("no student: ") and "EDDY_EXPORT_STUDENT_SIZE" in note
    other = BatchModel.from_bytes(model.to_bytes())
    other.classes = list(reversed(other.classes))
    with pytest.raises(RegistryError, match="feature names or classes differ"):
        check_same_interface(model, other)


def test_quantization_of_falls_back_to_teacher_int8(teacher):
    model, train_x, hold_x, hold_y = teacher
    report = compress(
        model,
        train_x,
        hold_x,
        hold_y,
        max_delta=0.0,
        min_size_ratio=1000.0,
        ladder=(),
        with_student=False,
        timing_rounds=1,
    )
    q = quantization_of(report)
    assert q["variant"] == "teacher-int8" and report.chosen is None
    assert q["size_ratio"] == report.row("teacher-int8").size_ratio
