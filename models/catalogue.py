"""The catalogue of named models, and what a stream's model becomes.

A stream's model is a River estimator or pipeline (cloned per stream), a
:class:`~eddy.models.learners.TorchModel`, or the name of a catalogue entry;
:func:`make_learner` turns any of them into an
:class:`~eddy.models.learners.OnlineLearner`. The catalogue's own entries are data
(:data:`CATALOGUE`, built when this module is first imported, nothing else is
touched); :func:`register_model` adds users' entries the same way.

>>> sorted(CATALOGUE)[:3]
['arf', 'hat', 'hoeffding']
>>> make_learner("scaled-logreg", "binary").per_example
True
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import Any

from river import base, compose, forest, linear_model, optim, preprocessing, tree

from eddy.models.exceptions import ModelConfigError
from eddy.models.learners import OnlineLearner, RiverLearner, TorchModel

LEARNING_RATE = 0.01  # the catalogue's linear models: River's default SGD rate


@dataclass(frozen=True)
class ModelSpec:
    """A catalogue entry: a factory of model objects for the tasks it does.

    ``factory(task)`` returns a River estimator or pipeline, or a
    :class:`~eddy.models.learners.TorchModel`.
    """

    name: str
    tasks: tuple[str, ...]
    description: str
    factory: Callable[[str], Any]


def _numbers_and_categories(numeric: Any) -> Any:
    """Numbers through ``numeric``, text one-hot encoded.

    ``numeric`` on the number features, one-hot on the text ones; on numbers-only
    data it computes exactly what ``numeric`` alone does.
    """
    return compose.TransformerUnion(
        compose.SelectType(int, float) | numeric,
        compose.SelectType(str) | preprocessing.OneHotEncoder(),
    )


def _linear(estimator: type, scaled: bool) -> Callable[[str], Any]:
    """A factory of a River linear model with SGD.

    A River linear model with SGD at :data:`LEARNING_RATE`; ``scaled``: behind a
    standard scaler for the numbers and one-hot encoding for the text features.
    """

    def build(task: str) -> Any:
        model = estimator(optimizer=optim.SGD(LEARNING_RATE))
        return _numbers_and_categories(preprocessing.StandardScaler()) | model if scaled else model

    return build


def _fixed(build: Callable[[], Any]) -> Callable[[str], Any]:
    """An entry whose model does not depend on the task."""
    return lambda task: build()


_SCALED = "StandardScaler | {}; text features one-hot encoded"
_RAW = "River {}, raw features (SGD, lr 0.01); numbers only"
_BUILT_IN = (
    ModelSpec(
        "logreg",
        ("binary",),
        _RAW.format("LogisticRegression"),
        _linear(linear_model.LogisticRegression, scaled=False),
    ),
    ModelSpec(
        "scaled-logreg",
        ("binary",),
        "River " + _SCALED.format("LogisticRegression"),
        _linear(linear_model.LogisticRegression, scaled=True),
    ),
    ModelSpec(
        "softmax",
        ("binary", "multiclass"),
        "River " + _SCALED.format("SoftmaxRegression"),
        _linear(linear_model.SoftmaxRegression, scaled=True),
    ),
    ModelSpec(
        "hoeffding",
        ("binary", "multiclass"),
        "River HoeffdingTreeClassifier (numbers and text natively)",
        _fixed(lambda: tree.HoeffdingTreeClassifier(grace_period=200)),
    ),
    ModelSpec(
        "hat",
        ("binary", "multiclass"),
        "River HoeffdingAdaptiveTreeClassifier",
        _fixed(lambda: tree.HoeffdingAdaptiveTreeClassifier(seed=42)),
    ),
    ModelSpec(
        "arf",
        ("binary", "multiclass"),
        "River ARFClassifier (10 trees)",
        _fixed(lambda: forest.ARFClassifier(n_models=10, seed=42)),
    ),
    ModelSpec(
        "linreg",
        ("regression",),
        _RAW.format("LinearRegression"),
        _linear(linear_model.LinearRegression, scaled=False),
    ),
    ModelSpec(
        "scaled-linreg",
        ("regression",),
        "River " + _SCALED.format("LinearRegression"),
        _linear(linear_model.LinearRegression, scaled=True),
    ),
    ModelSpec(
        "hoeffding-reg",
        ("regression",),
        "River HoeffdingTreeRegressor",
        _fixed(tree.HoeffdingTreeRegressor),
    ),
    ModelSpec(
        "torch-linear",
        ("binary", "multiclass", "regression"),
        "PyTorch linear model, mini-batch SGD on standardized features (text one-hot)",
        _fixed(lambda: TorchModel(hidden=0)),
    ),
    ModelSpec(
        "torch-mlp",
        ("binary", "multiclass", "regression"),
        "PyTorch MLP (one hidden layer of 32), mini-batch SGD (text one-hot)",
        _fixed(lambda: TorchModel(hidden=32)),
    ),
)

CATALOGUE: dict[str, ModelSpec] = {spec.name: spec for spec in _BUILT_IN}


def register_model(
    name: str, factory: Callable[[str], Any], tasks: Sequence[str], description: str
) -> None:
    """Add a named model to the catalogue (what ``model="name"`` and ``EDDY_MODEL`` use).

    ``factory(task)`` returns a River estimator or pipeline, or a
    :class:`~eddy.models.learners.TorchModel`.
    """
    CATALOGUE[name] = ModelSpec(name, tuple(tasks), description, factory)


def make_learner(model: Any, task: str, batch_size: int = 256) -> OnlineLearner:
    """The online learner of one stream.

    An :class:`~eddy.models.learners.OnlineLearner` for one stream from a catalogue
    name, a River estimator or pipeline (cloned: each stream learns its own), or a
    :class:`~eddy.models.learners.TorchModel`.

    Errors say what is allowed.
    """
    if isinstance(model, str):
        spec = CATALOGUE.get(model)
        if spec is None:
            msg = f"unknown model {model!r}; known: {', '.join(CATALOGUE)} (see `eddy catalogue`)"
            raise ModelConfigError(msg)
        if task not in spec.tasks:
            msg = (
                f"model {model!r} does {', '.join(spec.tasks)}, not {task!r}: set the stream's "
                "task (--task, EDDY_TASK, or task in its [streams.<name>] table)"
            )
            raise ModelConfigError(msg)
        model = spec.factory(task)
    if isinstance(model, TorchModel):
        # Not at the top: torch costs a second to import, and River streams never need it.
        from eddy.models.torch_learner import TorchLearner

        return TorchLearner(task, model, batch_size)
    if isinstance(model, base.Estimator):
        _check_river_task(model, task)
        return RiverLearner(task, model.clone())
    msg = (
        f"a model must be a catalogue name, a River estimator or pipeline, or an "
        f"eddy.TorchModel; got {type(model).__name__}"
    )
    raise ModelConfigError(msg)


def describe(model: Any) -> str:
    """A short name of a model for logs, metrics and cards."""
    if isinstance(model, str):
        return model
    if isinstance(model, base.Estimator):
        return str(model).replace("\n", " ")[:120]
    return type(model).__name__


def _check_river_task(model: base.Estimator, task: str) -> None:
    # A River pipeline is an instance of its last step's kind.
    if task == "regression" and not isinstance(model, base.Regressor):
        msg = f"task regression needs a River regressor; {describe(model)} is not one"
        raise ModelConfigError(msg)
    if task != "regression" and not isinstance(model, base.Classifier):
        msg = f"task {task} needs a River classifier; {describe(model)} is not one"
        raise ModelConfigError(msg)
    if task == "multiclass" and not getattr(model, "_multiclass", True):
        msg = f"{describe(model)} learns two classes only; use task binary or a multiclass model"
        raise ModelConfigError(msg)
