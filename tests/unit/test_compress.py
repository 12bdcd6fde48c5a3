"""Distillation, structured pruning and the compression report (eddy.models.maintain.compress)."""

import json

import numpy as np
import pytest
import torch

from eddy.models.maintain.batch import BatchModel, TrainParams, score, train
from eddy.models.maintain.compress import (
    DistillParams,
    compress,
    distill,
    parameter_count,
    prune_structured,
    student_hidden_for,
)
from eddy.models.maintain.export import run, session, to_onnx
from tests.unit.synthetic import three_classes

NAMES = [f"f{i}" for i in range(8)]


@pytest.fixture(scope="module", autouse=True)
def one_thread():
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(threads)


X, Y = three_classes(4000)
TRAIN_X, TRAIN_Y, HOLD_X, HOLD_Y = X[:3000], Y[:3000], X[3000:], Y[3000:]


@pytest.fixture(scope="module")
def teacher(one_thread) -> BatchModel:
    params = TrainParams(hidden=(64, 64), epochs=30, batch_size=128)
    return train(TRAIN_X, TRAIN_Y, "classification", NAMES, params)


def test_student_hidden_for_picks_the_largest_shape_under_the_target(teacher):
    total = parameter_count(8, (64, 64), 3)
    assert total == 8 * 64 + 64 + 64 * 64 + 64 + 64 * 3 + 3
    hidden = student_hidden_for(teacher, max_params=total // 4)
    assert hidden == (24, 24)
    assert parameter_count(8, hidden, 3) <= total // 4
    assert student_hidden_for(teacher, max_bytes=total) == hidden  # 4 bytes per parameter
    with pytest.raises(ValueError, match="exactly one"):
        student_hidden_for(teacher)
    with pytest.raises(ValueError, match="raise the size target"):
        student_hidden_for(teacher, max_params=10)


def test_distilled_student_is_smaller_and_close_to_the_teacher(teacher):
    rng_state = torch.get_rng_state()
    student = distill(teacher, TRAIN_X, hidden=(24, 24), seed=1)
    assert torch.equal(torch.get_rng_state(), rng_state)  # the global RNG is left alone
    assert student.params.hidden == (24, 24) and student.classes == teacher.classes
    assert len(to_onnx(student)) < len(to_onnx(teacher)) / 3
    teacher_accuracy = score(teacher, HOLD_X, HOLD_Y)
    assert score(student, HOLD_X, HOLD_Y) >= teacher_accuracy - 0.03
    again = BatchModel.from_bytes(student.to_bytes())
    assert again.predict_matrix(HOLD_X) == student.predict_matrix(HOLD_X)
    assert distill(teacher, TRAIN_X, hidden=(24, 24), seed=1).predict_matrix(
        HOLD_X
    ) == student.predict_matrix(HOLD_X)


def test_structured_pruning_shrinks_layers_and_the_onnx_file(teacher):
    before = teacher.predict_matrix(HOLD_X)
    sizes = [len(to_onnx(teacher))]
    for fraction, width in [(0.25, 48), (0.5, 32), (0.75, 16)]:
        pruned = prune_structured(teacher, fraction)
        assert pruned.params.hidden == (width, width)
        assert [m.out_features for m in pruned.net if isinstance(m, torch.nn.Linear)] == [
            width,
            width,
            3,
        ]
        sizes.append(len(to_onnx(pruned)))
    assert sizes == sorted(sizes, reverse=True)
    assert teacher.params.hidden == (64, 64)
    assert teacher.predict_matrix(HOLD_X) == before  # the teacher is untouched
    same = prune_structured(teacher, 0.0)
    assert same.predict_matrix(HOLD_X) == before


def test_structured_pruning_removes_the_weakest_units(teacher):
    model = BatchModel.from_bytes(teacher.to_bytes())
    with torch.no_grad():  # unit 5 of the first layer: no incoming weights, no bias
        model.net[0].weight[5] = 0.0
        model.net[0].bias[5] = 0.0
    pruned = prune_structured(model, 1 / 64)
    assert pruned.params.hidden == (63, 63)
    first = pruned.net[0].weight
    assert not any(torch.equal(row, torch.zeros_like(row)) for row in first)
    # unit 5 contributed nothing, so only the second layer's weakest unit changes outputs
    assert np.mean(np.array(pruned.predict_matrix(HOLD_X)) == model.predict_matrix(HOLD_X)) > 0.95


def test_compress_reports_every_variant_and_picks_the_smallest_passing(teacher):
    report = compress(
        teacher,
        TRAIN_X,
        HOLD_X,
        HOLD_Y,
        max_delta=0.02,
        min_size_ratio=1.5,
        magnitude=True,
        seed=1,
        timing_rounds=2,
    )
    names = [v.name for v in report.variants]
    assert names == [
        "teacher-fp32",
        "teacher-int8",
        "student-fp32",
        "student-int8",
        "structured-25-int8",
        "structured-50-int8",
        "structured-75-int8",
        "magnitude-25-int8",
        "magnitude-50-int8",
        "magnitude-75-int8",
    ]
    reference = report.row("teacher-fp32")
    assert reference.size_ratio == 1.0 and reference.delta == 0.0
    for v in report.variants:
        assert v.bytes > 0 and v.batch1_us > 0 and v.batch256_per_s > 0
        assert v.quality == pytest.approx(reference.quality + v.delta)
        if v.precision == "fp32":
            assert v.passed is None
        else:
            assert v.passed == (v.size_ratio >= 1.5 and -v.delta <= 0.02), v
    assert report.row("structured-75-int8").hidden == (16, 16)
    assert report.row("structured-25-int8").pruning == "structured"
    # zeroed weights are still stored: magnitude pruning does not shrink the file
    magnitude = report.row("magnitude-50-int8")
    assert magnitude.pruning == "magnitude" and magnitude.hidden == (64, 64)
    assert abs(magnitude.bytes - report.row("teacher-int8").bytes) < 100

    passing = [v for v in report.variants if v.passed]
    assert passing
    assert report.chosen == min(passing, key=lambda v: v.bytes).name
    chosen = report.row(report.chosen)
    assert len(report.chosen_onnx) == chosen.bytes
    assert report.chosen_model.params.hidden == chosen.hidden
    out = run(session(report.chosen_onnx), HOLD_X)
    accuracy = np.mean(
        [teacher.classes[i] == t for i, t in zip(out.argmax(1), HOLD_Y, strict=True)]
    )
    assert accuracy == pytest.approx(chosen.quality)

    card = json.loads(json.dumps(report.as_dict()))
    assert card["chosen"] == report.chosen and len(card["variants"]) == 10
    assert "chosen_onnx" not in card and card["gate"] == {"max_delta": 0.02, "min_size_ratio": 1.5}
    table = report.table()
    assert all(name in table for name in names)
    assert f"* {report.chosen}" in table


def test_compress_with_nothing_passing(teacher):
    report = compress(
        teacher,
        TRAIN_X,
        HOLD_X,
        HOLD_Y,
        max_delta=0.02,
        min_size_ratio=50.0,
        ladder=(0.5,),
        student=DistillParams(hidden=(8,), epochs=5),
        timing_rounds=1,
    )
    assert report.chosen is None and report.chosen_onnx is None
    assert report.reason.startswith("no int8 variant passes the gate (teacher-int8: size ratio")
    assert report.row("student-fp32").hidden == (8,)
    assert "chosen: none" in report.table()


def test_compress_falls_back_to_teacher_int8(teacher):
    report = compress(
        teacher,
        TRAIN_X,
        HOLD_X,
        HOLD_Y,
        max_delta=0.01,
        min_size_ratio=1.5,
        ladder=(0.75,),
        student=DistillParams(hidden=(4,), epochs=3),
        fine_tune_epochs=0,
        timing_rounds=1,
    )
    assert not report.row("student-int8").passed
    assert not report.row("structured-75-int8").passed
    assert report.chosen == "teacher-int8"
    assert report.row("structured-75-int8").fine_tune_epochs == 0


def test_bad_arguments(teacher):
    with pytest.raises(ValueError, match="fraction"):
        prune_structured(teacher, 1.0)
    with pytest.raises(ValueError, match="ladder"):
        compress(teacher, TRAIN_X, HOLD_X, HOLD_Y, max_delta=0.1, min_size_ratio=1, ladder=(1.0,))
    with pytest.raises(ValueError, match="holdout"):
        compress(teacher, TRAIN_X, HOLD_X[:0], [], max_delta=0.1, min_size_ratio=1)


def test_regression():
    rng = np.random.default_rng(3)
    x = rng.normal(size=(3000, 6)).astype(np.float32)
    y = np.sin(x[:, 0]) + x[:, 1] * x[:, 2] + 0.1 * rng.normal(size=3000)
    targets = [float(v) for v in y]
    names = list("abcdef")
    params = TrainParams(hidden=(64, 64), epochs=30, batch_size=128)
    teacher = train(x[:2400], targets[:2400], "regression", names, params)
    student = distill(teacher, x[:2400], hidden=(24, 24), seed=2)
    assert student.classes is None
    teacher_mae = -score(teacher, x[2400:], targets[2400:])
    assert -score(student, x[2400:], targets[2400:]) <= teacher_mae * 1.25
    report = compress(
        teacher,
        x[:2400],
        x[2400:],
        targets[2400:],
        max_delta=0.05,
        min_size_ratio=1.5,
        ladder=(0.25, 0.5),
        seed=2,
        timing_rounds=1,
    )
    assert report.metric == "mae" and report.task == "regression"
    assert report.row("teacher-fp32").quality == pytest.approx(teacher_mae, rel=1e-4)
    for v in report.variants:
        if v.passed is not None:
            assert v.passed == (v.size_ratio >= 1.5 and v.delta <= 0.05)
    assert report.chosen is not None
    assert report.row(report.chosen).passed
