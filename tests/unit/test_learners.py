"""One contract for every model in the catalogue, the guard that refuses examples whose
learning fails, users' own models, and the PyTorch learner's own behaviour."""

import copy
import itertools
import math
import pickle
import random

import numpy as np
import pytest
from river import linear_model, preprocessing, tree

from eddy.models.catalogue import CATALOGUE, make_learner
from eddy.models.exceptions import ModelConfigError
from eddy.models.learners import LEARN_ERROR, NON_FINITE, RiverLearner, TorchModel
from eddy.models.metrics import PrequentialMetrics
from eddy.models.torch_learner import TorchLearner
from eddy.streams.ops.sources import open_named

SOURCE = {"binary": "sea", "multiclass": "led", "regression": "friedman"}
CASES = [(name, task) for name, spec in CATALOGUE.items() for task in spec.tasks]


def _data(task, n, seed=1):
    return list(itertools.islice(open_named(SOURCE[task], seed=seed), n))


def _learn(learner, data):
    xs, ys = [x for x, _ in data], [y for _, y in data]
    learner.learn_many(xs, ys, list(range(len(xs))))
    if hasattr(learner, "flush"):
        learner.flush()


@pytest.mark.parametrize(("name", "task"), CASES)
def test_every_model_predicts_before_learning_and_survives_pickling(name, task):
    learner = make_learner(name, task, batch_size=64)
    data = _data(task, 300)
    xs, ys = [x for x, _ in data], [y for _, y in data]
    first = learner.predict_many(xs[:5])  # nothing learned yet: no crash
    assert len(first) == 5
    _learn(learner, data[:200])
    assert learner.take_refused() == []
    clone = pickle.loads(pickle.dumps(learner))
    ours = [p.value for p in learner.predict_many(xs[200:])]
    theirs = [p.value for p in clone.predict_many(xs[200:])]
    assert ours == theirs
    for p in learner.predict_many(xs[200:210]):
        if task == "regression":
            assert isinstance(p.value, float)
        else:
            assert p.value in set(ys)
            assert p.proba and abs(sum(p.proba.values()) - 1) < 1e-6


def test_dense_vectors_work_like_maps():
    learner = make_learner("scaled-logreg", "binary")
    data = _data("binary", 200)
    as_vectors = [[x[k] for k in sorted(x)] for x, _ in data]
    learner.learn_many(as_vectors, [y for _, y in data], range(200))
    assert learner.predict_many(as_vectors[:1])[0].value in (True, False)


def test_unknown_model_or_task_names_what_is_allowed():
    with pytest.raises(ModelConfigError, match="known: logreg"):
        make_learner("xgboost", "binary")
    with pytest.raises(ModelConfigError, match="not 'regression'"):
        make_learner("logreg", "regression")
    with pytest.raises(ModelConfigError, match="needs a River regressor"):
        make_learner(linear_model.LogisticRegression(), "regression")
    with pytest.raises(ModelConfigError, match="two classes only"):
        make_learner(linear_model.LogisticRegression(), "multiclass")
    with pytest.raises(ModelConfigError, match="catalogue name, a River estimator"):
        make_learner(object(), "binary")


def test_a_users_river_pipeline_is_cloned_per_stream():
    pipeline = preprocessing.StandardScaler() | linear_model.LogisticRegression()
    a, b = make_learner(pipeline, "binary"), make_learner(pipeline, "binary")
    _learn(a, _data("binary", 100))
    assert a.estimator is not pipeline and b.estimator is not pipeline
    assert a.predict_many([{"0": 1.0, "1": 2.0, "2": 3.0}]) != b.predict_many(
        [{"0": 1.0, "1": 2.0, "2": 3.0}]
    )


class _Exploding(tree.HoeffdingTreeClassifier):
    """A River model that raises on one poisoned value, after changing its state."""

    def learn_one(self, x, y, **kwargs):
        super().learn_one(x, y, **kwargs)
        if x.get("0") == 666.0:
            raise OverflowError("math range error")


@pytest.mark.parametrize("at", [5, 150, 700])
def test_an_example_whose_learning_raises_is_refused_and_undone(at):
    data = _data("binary", 1000)
    poisoned = [(dict(x), y) for x, y in data]
    poisoned[at][0]["0"] = 666.0
    guarded = RiverLearner("binary", _Exploding(grace_period=50))
    _learn(guarded, poisoned)
    refused = guarded.take_refused()
    assert [(r.ref, r.reason) for r in refused] == [(at, LEARN_ERROR)]
    assert "OverflowError" in refused[0].message
    # The model is exactly the one that learned every other example.
    clean = RiverLearner("binary", tree.HoeffdingTreeClassifier(grace_period=50))
    _learn(clean, [d for i, d in enumerate(data) if i != at])
    probe = [x for x, _ in _data("binary", 200, seed=9)]
    assert [p.proba for p in guarded.predict_many(probe)] == [
        p.proba for p in clean.predict_many(probe)
    ]


def test_an_example_that_makes_outputs_non_finite_is_refused_and_undone():
    data = _data("binary", 600)
    poisoned = [(dict(x), y) for x, y in data]
    poisoned[300][0]["1"] = 1e308  # StandardScaler's variance overflows: weights go NaN
    learner = make_learner(
        preprocessing.StandardScaler() | linear_model.LogisticRegression(), "binary"
    )
    xs, ys = [x for x, _ in poisoned], [y for _, y in poisoned]
    predictions = []
    for i, (x, y) in enumerate(zip(xs, ys, strict=True)):
        predictions += learner.predict_many([x])
        learner.learn_many([x], [y], [i])
    refused = learner.take_refused()
    assert [(r.ref, r.reason) for r in refused] == [(300, NON_FINITE)]
    assert all(p.proba and all(math.isfinite(v) for v in p.proba.values()) for p in predictions[1:])
    clean = make_learner(
        preprocessing.StandardScaler() | linear_model.LogisticRegression(), "binary"
    )
    clean.learn_many(
        [x for i, x in enumerate(xs) if i != 300],
        [y for i, y in enumerate(ys) if i != 300],
        range(599),
    )
    probe = [x for x, _ in _data("binary", 50, seed=8)]
    assert [p.proba for p in learner.predict_many(probe)] == [
        p.proba for p in clean.predict_many(probe)
    ]


def test_torch_refuses_the_example_that_breaks_a_step_and_steps_without_it():
    data = _data("binary", 512)
    poisoned = [(dict(x), y) for x, y in data]
    poisoned[100][0]["2"] = 1e200  # overflows the running variance
    learner = TorchLearner("binary", TorchModel(hidden=0), batch_size=256)
    _learn(learner, poisoned)
    refused = learner.take_refused()
    assert [(r.ref, r.reason) for r in refused] == [(100, NON_FINITE)]
    assert learner._finite() and learner.seen == 511
    assert all(p.value is not None for p in learner.predict_many([x for x, _ in data[:20]]))


@pytest.mark.parametrize(("task", "hidden", "floor"), [("binary", 0, 0.93), ("binary", 32, 0.8)])
def test_torch_learner_learns_sea(task, hidden, floor):
    learner = TorchLearner(task, TorchModel(hidden=hidden, seed=3), batch_size=256)
    metrics = PrequentialMetrics(task)
    data = _data(task, 20_000, seed=3)
    for start in range(0, len(data), 256):
        batch = data[start : start + 256]
        ys = [y for _, y in batch]
        for y, p in zip(ys, learner.predict_many([x for x, _ in batch]), strict=True):
            if not p.empty:
                metrics.update(y, p.value, p.proba)
        learner.learn_many([x for x, _ in batch], ys, range(len(batch)))
    assert metrics.values()["accuracy"] > floor


def test_a_users_torch_module_with_its_own_optimizer_and_loss():
    import torch
    from torch import nn

    def module(d, k):
        return nn.Sequential(nn.Linear(d, 16), nn.Tanh(), nn.Linear(16, k))

    def optimizer(params):
        return torch.optim.Adam(params, lr=0.01)

    spec = TorchModel(module=module, optimizer=optimizer, loss=nn.functional.cross_entropy)
    learner = TorchLearner("binary", spec, batch_size=64)
    data = _data("binary", 4000, seed=5)
    _learn(learner, data[:3000])
    right = [
        p.value == y
        for p, (_, y) in zip(
            learner.predict_many([x for x, _ in data[3000:]]), data[3000:], strict=True
        )
    ]
    assert sum(right) / len(right) > 0.85
    restored = pickle.loads(pickle.dumps(learner))
    restored.bind(spec)
    _learn(restored, data[3000:3200])  # keeps learning with the user's optimizer
    assert restored._optimizer is not None
    learner.learn_many([{"0": 1.0}], ["maybe"], ["bad"])
    assert [r.reason for r in learner.take_refused()] == [LEARN_ERROR]
    with pytest.raises(ValueError, match="needs classes"):
        TorchLearner("multiclass", spec)


def test_torch_learner_takes_text_and_boolean_features():
    learner = TorchLearner("binary", TorchModel(), batch_size=4)
    rows = [{"x": 1.0, "color": "red", "ok": True}, {"x": -1.0, "color": "blue", "ok": False}] * 2
    learner.learn_many(rows, [True, False, True, False], range(4))
    assert set(learner.features) == {"x", "color=red", "ok", "color=blue"}
    assert learner.predict_many([{"x": 1.0, "color": "green", "ok": True}])[0].value in (
        True,
        False,
    )


def test_torch_learner_grows_for_new_features_and_classes_without_changing_old_predictions():
    learner = TorchLearner("multiclass", TorchModel(seed=1), batch_size=2)
    learner.learn_many([{"a": 1.0}, {"a": -1.0}], ["x", "y"], [0, 1])
    before = learner.predict_many([{"a": 0.5}])[0]
    grown = copy.deepcopy(learner)
    # a new feature and a new class appear; weights for them start at zero
    grown._matrix([{"b": 2.0}], grow=True)
    grown.classes.append("z")
    grown._class_index["z"] = 2
    grown._ensure_net()
    after = grown.predict_many([{"a": 0.5}])[0]
    assert after.value == before.value
    assert set(after.proba) == {"x", "y", "z"}
    learner.learn_many([{"a": 0.0, "b": 3.0}, {"a": 0.1, "b": 3.0}], ["z", "z"], [2, 3])
    assert learner.classes == ["x", "y", "z"]
    assert len(learner.features) == 2


def test_torch_regression_tracks_the_target_scale():
    learner = TorchLearner("regression", TorchModel(seed=2), batch_size=128)
    data = _data("regression", 10_000, seed=2)
    metrics = PrequentialMetrics("regression")
    for start in range(0, len(data), 128):
        batch = data[start : start + 128]
        ys = [y for _, y in batch]
        for y, p in zip(ys, learner.predict_many([x for x, _ in batch]), strict=True):
            if not p.empty:
                metrics.update(y, p.value)
        learner.learn_many([x for x, _ in batch], ys, range(len(batch)))
    assert metrics.values("rolling")["r2"] > 0.6


def test_the_torch_learners_fast_matrix_equals_the_general_one():
    learner = TorchLearner("binary", batch_size=1)
    learner.learn_many([{"a": 1.0, "b": 2.0}], [True], [0])  # known features: a, b
    rows = [{"b": 4.0, "a": 3.0}, {"a": 5.0, "b": 6.0}]  # key order differs: same columns
    assert learner._matrix(rows, grow=False).tolist() == [[3.0, 4.0], [5.0, 6.0]]
    # a row with another name takes the general path: unknown names are skipped...
    assert learner._matrix([{"a": 1.0, "c": 9.0}], grow=False).tolist() == [[1.0, 0.0]]
    # ...or learned as a new column when growing
    assert learner._matrix([{"a": 1.0, "c": 9.0}], grow=True).tolist() == [[1.0, 0.0, 9.0]]
    positional = TorchLearner("binary", batch_size=1)
    positional.learn_many([[1.0, 2.0]], [True], [0])
    assert positional._matrix([[3.0, 4.0]], grow=False).tolist() == [[3.0, 4.0]]


def test_torch_matrix_from_columns_equals_the_general_path() -> None:
    """The batch's matrix built from its compiled columns is the general path's, cell for
    cell, for rows with missing features, other key orders, booleans and text."""
    from eddy.models.torch_learner import TorchLearner

    rng = random.Random(4)

    def row() -> dict:
        x: dict = {}
        for name in rng.sample(["a", "b", "c", "d"], rng.randint(1, 4)):
            x[name] = rng.choice([rng.uniform(-5, 5), True, False, 3, 1e40])
        if rng.random() < 0.5:
            x["colour"] = rng.choice(["red", "blue"])
        return x

    learner = TorchLearner("binary")
    warm = [row() for _ in range(300)]
    learner.learn_many(warm, [rng.random() < 0.5 for _ in warm], list(range(300)))
    for _ in range(50):
        xs = [row() for _ in range(rng.randint(1, 20))]
        fast = learner._known_columns(xs)
        learner_known = learner._known_columns
        learner._known_columns = lambda xs: None  # type: ignore[method-assign]
        try:
            general = learner._matrix(xs, grow=False)
        finally:
            learner._known_columns = learner_known  # type: ignore[method-assign]
        if fast is not None:
            assert np.array_equal(fast, general, equal_nan=True)
    assert learner._known_columns([{"a": 1.0, "new": 2.0}]) is None  # a column to grow
