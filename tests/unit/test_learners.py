"""One contract for every model in the catalogue, plus the PyTorch learner's own behaviour."""

import copy
import itertools
import pickle

import pytest

from eddy.models.exceptions import ModelConfigError
from eddy.models.learners import CATALOGUE, make_learner
from eddy.models.metrics import PrequentialMetrics
from eddy.models.torch_learner import TorchLearner
from eddy.streams.sources import open_named

SOURCE = {"binary": "sea", "multiclass": "led", "regression": "friedman"}
CASES = [(name, task) for name, spec in CATALOGUE.items() for task in spec.tasks]


def _data(task, n, seed=1):
    return list(itertools.islice(open_named(SOURCE[task], seed=seed), n))


@pytest.mark.parametrize(("name", "task"), CASES)
def test_every_model_predicts_before_learning_and_survives_pickling(name, task):
    learner = make_learner(name, task, {"n_models": 3} if name == "arf" else None)
    data = _data(task, 300)
    xs, ys = [x for x, _ in data], [y for _, y in data]
    first = learner.predict_many(xs[:5])  # nothing learned yet: no crash
    assert len(first) == 5
    predictions = learner.test_then_train(xs[:200], ys[:200])
    assert len(predictions) == 200
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
    learner.test_then_train(as_vectors, [y for _, y in data])
    assert learner.predict_many(as_vectors[:1])[0].value in (True, False)


def test_unknown_model_or_task_names_what_is_allowed():
    with pytest.raises(ModelConfigError, match="known: logreg"):
        make_learner("xgboost", "binary")
    with pytest.raises(ModelConfigError, match="not 'regression'"):
        make_learner("logreg", "regression")


@pytest.mark.parametrize(("task", "hidden", "floor"), [("binary", 0, 0.93), ("binary", 32, 0.8)])
def test_torch_learner_learns_sea(task, hidden, floor):
    learner = TorchLearner(task, hidden=hidden, seed=3)
    metrics = PrequentialMetrics(task)
    data = _data(task, 20_000, seed=3)
    for start in range(0, len(data), 256):
        batch = data[start : start + 256]
        ys = [y for _, y in batch]
        for y, p in zip(ys, learner.test_then_train([x for x, _ in batch], ys), strict=True):
            metrics.update(y, p.value, p.proba)
    assert metrics.values()["accuracy"] > floor


def test_torch_learner_grows_for_new_features_and_classes_without_changing_old_predictions():
    learner = TorchLearner("multiclass", seed=1)
    learner.learn_many([{"a": 1.0}, {"a": -1.0}], ["x", "y"])
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
    learner.learn_many([{"a": 0.0, "b": 3.0}], ["z"])
    assert learner.classes == ["x", "y", "z"]
    assert len(learner.features) == 2


def test_torch_regression_tracks_the_target_scale():
    learner = TorchLearner("regression", seed=2)
    data = _data("regression", 10_000, seed=2)
    metrics = PrequentialMetrics("regression")
    for start in range(0, len(data), 128):
        batch = data[start : start + 128]
        ys = [y for _, y in batch]
        for y, p in zip(ys, learner.test_then_train([x for x, _ in batch], ys), strict=True):
            metrics.update(y, p.value)
    assert metrics.values("rolling")["r2"] > 0.6


def test_the_torch_learners_fast_matrix_equals_the_general_one():
    learner = TorchLearner("binary")
    learner.learn_many([{"a": 1.0, "b": 2.0}], [True])  # known features: a, b
    rows = [{"b": 4.0, "a": 3.0}, {"a": 5.0, "b": 6.0}]  # key order differs: same columns
    assert learner._matrix(rows, grow=False).tolist() == [[3.0, 4.0], [5.0, 6.0]]
    # a row with another name takes the general path: unknown names are skipped...
    assert learner._matrix([{"a": 1.0, "c": 9.0}], grow=False).tolist() == [[1.0, 0.0]]
    # ...or learned as a new column when growing
    assert learner._matrix([{"a": 1.0, "c": 9.0}], grow=True).tolist() == [[1.0, 0.0, 9.0]]
    positional = TorchLearner("binary")
    positional.learn_many([[1.0, 2.0]], [True])
    assert positional._matrix([[3.0, 4.0]], grow=False).tolist() == [[3.0, 4.0]]
