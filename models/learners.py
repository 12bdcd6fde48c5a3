"""Online learners chosen by name: River pipelines and eddy's PyTorch mini-batch learner.

Every learner offers the same small interface (:class:`OnlineLearner`):
``predict_many`` then ``learn_many`` over a mini-batch. River learners do this
one example at a time inside the batch (predict x_i, then learn x_i, then
predict x_{i+1}…), which is exactly River's own test-then-train order; the
PyTorch learner predicts the whole mini-batch and then takes one SGD step on
its mean gradient, which is *not* the same as per-example learning (River
issue #1912) and is declared by ``per_example = False``.
"""

from __future__ import annotations

import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import Any, NamedTuple, Protocol

from river import forest, linear_model, optim, preprocessing, tree

from eddy.models.exceptions import ModelConfigError

Features = dict[Any, float] | list[float]


class Prediction(NamedTuple):
    """A prediction: the label (or value) and, for classifiers, class probabilities.

    A named tuple, not a dataclass: one is made per example on the hot path.
    """

    value: Any
    proba: dict[Any, float] | None = None


class OnlineLearner(Protocol):
    """What the learner agent needs of a model."""

    name: str
    task: str
    per_example: bool
    predict_seconds: float  # time spent predicting so far (for latency metrics)

    def predict_many(self, xs: Sequence[Features]) -> list[Prediction]:
        """Predict a mini-batch (River learners: per example, interleaved with learning)."""
        ...

    def test_then_train(self, xs: Sequence[Features], ys: Sequence[Any]) -> list[Prediction]:
        """Predict each example before learning it; return the predictions."""
        ...


def as_dict(x: Features) -> dict[Any, float]:
    """River wants dicts: a dense vector becomes ``{0: x0, 1: x1, …}``."""
    return x if isinstance(x, dict) else dict(enumerate(x))


class RiverLearner:
    """A River estimator behind eddy's interface; predictions equal River's own.

    For classifiers the label is ``max(proba, key=proba.get)``, which is what
    River's ``Classifier.predict_one`` returns, so the probabilities and the
    label come from one call.
    """

    per_example = True

    def __init__(self, name: str, task: str, estimator: Any) -> None:
        self.name = name
        self.task = task
        self.estimator = estimator
        self._classifier = task != "regression"
        self.predict_seconds = 0.0

    def _predict(self, x: dict[Any, float]) -> Prediction:
        if self._classifier:
            proba = self.estimator.predict_proba_one(x)
            return Prediction(max(proba, key=proba.get) if proba else None, proba)
        return Prediction(self.estimator.predict_one(x))

    def predict_many(self, xs: Sequence[Features]) -> list[Prediction]:
        """Predict without learning."""
        return [self._predict(as_dict(x)) for x in xs]

    def test_then_train(self, xs: Sequence[Features], ys: Sequence[Any]) -> list[Prediction]:
        """Predict then learn, one example at a time (River's prequential order).

        ``predict_seconds`` accumulates the time spent predicting.
        """
        out = []
        learn = self.estimator.learn_one
        clock = time.perf_counter
        spent = 0.0
        for x, y in zip(xs, ys, strict=True):
            xd = as_dict(x)
            started = clock()
            out.append(self._predict(xd))
            spent += clock() - started
            learn(xd, y)
        self.predict_seconds += spent
        return out


@dataclass(frozen=True)
class ModelSpec:
    """A model in the catalogue."""

    name: str
    tasks: tuple[str, ...]
    description: str
    build: Callable[[str, dict[str, Any]], OnlineLearner]


def _river(factory: Callable[[dict[str, Any]], Any]) -> Callable[[str, dict[str, Any]], Any]:
    def build(task: str, params: dict[str, Any]) -> OnlineLearner:
        return RiverLearner("", task, factory(params))

    return build


def _torch(hidden: int) -> Callable[[str, dict[str, Any]], OnlineLearner]:
    def build(task: str, params: dict[str, Any]) -> OnlineLearner:
        from eddy.models.torch_learner import TorchLearner

        return TorchLearner(task=task, hidden=params.get("hidden", hidden), **_torch_params(params))

    return build


def _torch_params(params: dict[str, Any]) -> dict[str, Any]:
    return {k: v for k, v in params.items() if k in ("lr", "seed", "weight_decay")}


def _lr(params: dict[str, Any], default: float = 0.01) -> optim.SGD:
    return optim.SGD(params.get("lr", default))


CATALOGUE: dict[str, ModelSpec] = {
    spec.name: spec
    for spec in [
        ModelSpec(
            "logreg",
            ("binary",),
            "River LogisticRegression, raw features (SGD, lr 0.01)",
            _river(lambda p: linear_model.LogisticRegression(optimizer=_lr(p))),
        ),
        ModelSpec(
            "scaled-logreg",
            ("binary",),
            "River StandardScaler | LogisticRegression",
            _river(
                lambda p: (
                    preprocessing.StandardScaler()
                    | linear_model.LogisticRegression(optimizer=_lr(p))
                )
            ),
        ),
        ModelSpec(
            "softmax",
            ("binary", "multiclass"),
            "River StandardScaler | SoftmaxRegression",
            _river(
                lambda p: (
                    preprocessing.StandardScaler()
                    | linear_model.SoftmaxRegression(optimizer=_lr(p))
                )
            ),
        ),
        ModelSpec(
            "hoeffding",
            ("binary", "multiclass"),
            "River HoeffdingTreeClassifier",
            _river(lambda p: tree.HoeffdingTreeClassifier(grace_period=p.get("grace_period", 200))),
        ),
        ModelSpec(
            "hat",
            ("binary", "multiclass"),
            "River HoeffdingAdaptiveTreeClassifier",
            _river(lambda p: tree.HoeffdingAdaptiveTreeClassifier(seed=p.get("seed", 42))),
        ),
        ModelSpec(
            "arf",
            ("binary", "multiclass"),
            "River ARFClassifier (10 trees)",
            _river(
                lambda p: forest.ARFClassifier(
                    n_models=p.get("n_models", 10), seed=p.get("seed", 42)
                )
            ),
        ),
        ModelSpec(
            "linreg",
            ("regression",),
            "River LinearRegression, raw features (SGD, lr 0.01)",
            _river(lambda p: linear_model.LinearRegression(optimizer=_lr(p))),
        ),
        ModelSpec(
            "scaled-linreg",
            ("regression",),
            "River StandardScaler | LinearRegression",
            _river(
                lambda p: (
                    preprocessing.StandardScaler() | linear_model.LinearRegression(optimizer=_lr(p))
                )
            ),
        ),
        ModelSpec(
            "hoeffding-reg",
            ("regression",),
            "River HoeffdingTreeRegressor",
            _river(lambda p: tree.HoeffdingTreeRegressor()),
        ),
        ModelSpec(
            "torch-linear",
            ("binary", "multiclass", "regression"),
            "PyTorch linear model, mini-batch SGD on standardized features",
            _torch(hidden=0),
        ),
        ModelSpec(
            "torch-mlp",
            ("binary", "multiclass", "regression"),
            "PyTorch MLP (one hidden layer of 32), mini-batch SGD",
            _torch(hidden=32),
        ),
    ]
}


def make_learner(name: str, task: str, params: dict[str, Any] | None = None) -> OnlineLearner:
    """Build a learner by catalogue name for ``task``; errors list what is allowed."""
    spec = CATALOGUE.get(name)
    if spec is None:
        msg = f"unknown model {name!r}; known: {', '.join(CATALOGUE)} (see `eddy models`)"
        raise ModelConfigError(msg)
    if task not in spec.tasks:
        msg = f"model {name!r} does {', '.join(spec.tasks)}, not {task!r}: set EDDY_TASK / --task"
        raise ModelConfigError(msg)
    learner = spec.build(task, dict(params or {}))
    learner.name = name
    return learner
