"""A stream's River model on the compiled path equals the same model on River's own path:
every prediction, every score, every refusal, the drift signals and the synced model,
fed the same batches of predict/learn operations as the engine feeds them.

The kernels themselves are checked against River in ``test_kernels.py``; here the
learner around them: batching, River's turn for what the kernel stops at (the guard),
pickles in the middle of a stream, and reading the model from outside.
"""

from __future__ import annotations

import itertools
import pickle
import random
from collections.abc import Callable
from typing import Any

import pytest
from river import datasets, linear_model, optim, preprocessing, tree
from river.datasets import synth

from eddy.models.catalogue import CATALOGUE, make_learner
from eddy.models.learners import RiverLearner
from eddy.models.prequential import Learn, Predict, StreamLearner, StreamSpec
from tests.unit.test_kernels import agrawal_text, roughen, state, take

Row = dict[Any, Any]


def _river_only(learner: StreamLearner) -> StreamLearner:
    """The same learner with its kernel turned off: River's own path throughout."""
    river = learner.learner
    assert isinstance(river, RiverLearner) and river.compiled
    river._kernel = None
    return learner


def _pair(model: Callable[[], Any], task: str) -> tuple[StreamLearner, StreamLearner]:
    spec = StreamSpec(model=model(), task=task, drift_min_examples=50, drift_cooldown=100)
    compiled = StreamLearner("s", spec)
    reference = _river_only(StreamLearner("s", spec))
    assert compiled.learner.compiled  # type: ignore[attr-defined]
    return compiled, reference


def _batches(stream: list[tuple[Row, Any]], delay: int, seed: int) -> list[list[Any]]:
    """The engine's ops for ``stream`` with labels ``delay`` rows late, cut into random
    batches; a Learn names its prediction by its index among the batch's predictions
    when both are in one batch."""
    rng = random.Random(seed)
    ops: list[tuple[str, int]] = []
    for i in range(len(stream)):
        ops.append(("p", i))
        if i >= delay:
            ops.append(("l", i - delay))
    ops += [("l", i) for i in range(max(0, len(stream) - delay), len(stream))]
    batches, start = [], 0
    while start < len(ops):
        end = min(len(ops), start + rng.choice([1, 3, 17, 200, 1000]))
        batches.append(ops[start:end])
        start = end
    return batches


def _run(learner: StreamLearner, stream, batches, served: dict[int, Any]) -> list[Any]:
    """Feed the batches; returns what each batch gave (predictions, seen, learning)."""
    out = []
    for batch in batches:
        ops: list[Any] = []
        here: dict[int, int] = {}  # row -> the index of its prediction in this batch
        for kind, i in batch:
            x, y = stream[i]
            if kind == "p":
                here[i] = len(here)
                ops.append(Predict(x))
            else:
                ops.append(Learn(x, y, here.get(i, served.get(i)), ("ref", i)))
        applied = learner.apply(ops)
        k = 0
        for kind, i in batch:
            if kind == "p":
                served[i] = applied.predictions[k]
                k += 1
        learned = applied.learned
        out.append(
            (
                applied.predictions,
                applied.seen,
                learned.learned,
                learned.scored,
                [(r.ref, r.reason) for r in learned.refused],
                [(f.ref, f.signal) for f in learned.findings],
            )
        )
    return out


def _same(compiled: StreamLearner, reference: StreamLearner, stream, delay: int, seed: int):
    batches = _batches(stream, delay, seed)
    got = _run(compiled, stream, batches, {})
    expected = _run(reference, stream, batches, {})
    for k, (g, e) in enumerate(zip(got, expected, strict=True)):
        assert g == e, k
    assert compiled.learned == reference.learned
    assert compiled.metrics.values() == reference.metrics.values()
    assert compiled.metrics.values("rolling") == reference.metrics.values("rolling")
    model = compiled.learner.estimator  # type: ignore[attr-defined]
    assert state(model) == state(reference.learner.estimator)  # type: ignore[attr-defined]


def _scaled(model: Any) -> Callable[[], Any]:
    return lambda: preprocessing.StandardScaler() | model


CASES: dict[str, tuple[Callable[[], Any], str, Callable[[], list[tuple[Row, Any]]]]] = {
    "sea-catalogue": (
        lambda: CATALOGUE["scaled-logreg"].factory("binary"),
        "binary",
        lambda: roughen(take(synth.SEA(seed=3, variant=2), 1500), seed=1),
    ),
    "phishing-adam": (
        _scaled(linear_model.LogisticRegression(optimizer=optim.Adam(0.02), l2=0.001)),
        "binary",
        lambda: take(datasets.Phishing(), 1250),
    ),
    "agrawal-text": (
        lambda: CATALOGUE["scaled-logreg"].factory("binary"),
        "binary",
        lambda: roughen(agrawal_text(1500, seed=4), seed=2, text=True),
    ),
    "segments-softmax": (
        _scaled(linear_model.SoftmaxRegression()),
        "multiclass",
        lambda: roughen(take(datasets.ImageSegments(), 1200), seed=3),
    ),
    "rbf-softmax-catalogue": (
        lambda: CATALOGUE["softmax"].factory("multiclass"),
        "multiclass",
        lambda: take(synth.RandomRBF(seed_model=1, seed_sample=2, n_classes=4), 1200),
    ),
    "friedman-linreg": (
        _scaled(linear_model.LinearRegression(optimizer=optim.SGD(0.02), clip_gradient=2.0)),
        "regression",
        lambda: roughen(take(synth.Friedman(seed=5), 1500), seed=4),
    ),
}


@pytest.mark.parametrize("delay", [0, 37])
@pytest.mark.parametrize("case", sorted(CASES))
def test_the_compiled_path_equals_rivers_own(case: str, delay: int) -> None:
    make, task, data = CASES[case]
    compiled, reference = _pair(make, task)
    _same(compiled, reference, data(), delay, seed=delay)


def test_dense_rows_are_numbered_as_river_numbers_them() -> None:
    rows = [([x[k] for k in sorted(x)], y) for x, y in take(synth.SEA(seed=9), 800)]
    compiled, reference = _pair(_scaled(linear_model.LogisticRegression()), "binary")
    _same(compiled, reference, rows, delay=5, seed=2)


def test_examples_that_break_the_model_are_refused_as_river_refuses_them() -> None:
    """The kernel stops before an example that would leave a non-finite number; River's
    guarded path then learns it, finds it broke the model, and refuses it: the same
    refusals, predictions and model as River's own path throughout."""
    stream = take(synth.Friedman(seed=2), 600)
    for at in (100, 101, 350):
        stream[at] = ({**stream[at][0], 0: 1e300}, stream[at][1])  # predictions overflow
    model = lambda: linear_model.LinearRegression(optimizer=optim.SGD(0.001))  # noqa: E731
    compiled, reference = _pair(model, "regression")
    batches = _batches(stream, 3, seed=7)
    got = _run(compiled, stream, batches, {})
    expected = _run(reference, stream, batches, {})
    assert got == expected
    refused = [r for batch in got for r in batch[4]]
    assert {ref for ref, _ in refused} >= {("ref", 100), ("ref", 101), ("ref", 350)}
    assert state(compiled.learner.estimator) == state(reference.learner.estimator)  # type: ignore[attr-defined]
    assert compiled.learner.compiled  # type: ignore[attr-defined]  # back on the kernel


def test_a_pickle_mid_stream_carries_what_the_kernel_learned() -> None:
    """A checkpoint (or a snapshot, or an export) pickles the River object with what the
    kernel learned; the restored learner compiles it again and goes on exactly."""
    make, task, data = CASES["agrawal-text"]
    stream = data()
    batches = _batches(stream, 11, seed=5)
    compiled, reference = _pair(make, task)
    half = len(batches) // 2
    served: dict[int, Any] = {}
    first = _run(compiled, stream, batches[:half], served)
    restored = pickle.loads(pickle.dumps(compiled))
    restored.bind(compiled.spec)
    assert restored.learner.compiled
    rest = _run(restored, stream, batches[half:], served)
    expected = _run(reference, stream, batches, {})
    assert first + rest == expected
    assert state(restored.learner.estimator) == state(reference.learner.estimator)


def test_reading_the_model_from_outside_sees_it_current_and_changes_reach_the_kernel() -> None:
    stream = take(synth.SEA(seed=4), 400)
    learner = make_learner("scaled-logreg", "binary")
    assert isinstance(learner, RiverLearner) and learner.compiled
    learner.learn_many([x for x, _ in stream[:200]], [y for _, y in stream[:200]], range(200))
    river = CATALOGUE["scaled-logreg"].factory("binary")
    for x, y in stream[:200]:
        river.learn_one(x, y)
    assert state(learner.estimator) == state(river)
    # Learned by River itself, through the object: the kernel reads it back.
    for x, y in stream[200:210]:
        learner.estimator.learn_one(x, y)
        river.learn_one(x, y)
    xs = [x for x, _ in stream[210:]]
    got = learner.predict_many(xs)
    assert [p.proba for p in got] == [river.predict_proba_one(x) for x in xs]


def test_a_few_ops_at_a_time_go_rivers_way_until_the_kernel_holds_the_state() -> None:
    """One-at-a-time callers keep River's speed (a kernel call has a fixed cost); once a
    batch has taken the kernel's way, small calls stay there (no write-back per call);
    a sync hands the state back. Every answer is River's either way."""
    stream = take(synth.SEA(seed=9), 600)
    learner = make_learner("scaled-logreg", "binary")
    assert isinstance(learner, RiverLearner) and learner.compiled
    river = CATALOGUE["scaled-logreg"].factory("binary")

    def step(rows: list[tuple[Row, Any]]) -> None:
        xs = [x for x, _ in rows]
        assert [p.proba for p in learner.predict_many(xs)] == [
            river.predict_proba_one(x) for x in xs
        ]
        learner.learn_many(xs, [y for _, y in rows], range(len(rows)))
        for x, y in rows:
            river.learn_one(x, y)

    for i in range(100):
        step(stream[i : i + 1])
    assert not learner._kernel_ahead  # River's own path: nothing to write back
    step(stream[100:300])
    assert learner._kernel_ahead  # the batch went the kernel's way
    for i in range(300, 400):
        step(stream[i : i + 1])
    assert learner._kernel_ahead  # and small calls stayed there
    assert state(learner.estimator) == state(river)  # a sync hands the state back
    for i in range(400, 600):
        step(stream[i : i + 1])
    assert not learner._kernel_ahead
    assert state(learner.estimator) == state(river)


@pytest.mark.parametrize(
    "model",
    [
        lambda: tree.HoeffdingTreeClassifier(),
        lambda: preprocessing.StandardScaler() | linear_model.Perceptron(),  # a subclass
        lambda: linear_model.LogisticRegression(l1=0.01),
    ],
)
def test_models_the_kernel_does_not_reproduce_stay_on_rivers_path(model) -> None:
    learner = make_learner(model(), "binary")
    assert isinstance(learner, RiverLearner) and not learner.compiled
    stream = list(itertools.islice(synth.SEA(seed=1), 300))
    river = model()
    for x, y in stream:
        assert learner.predict_many([x])[0].proba == river.predict_proba_one(x)
        learner.learn_many([x], [y], [None])
        river.learn_one(x, y)


def test_a_huge_regression_error_is_scored_at_the_cap_not_raised() -> None:
    """River's MSE squares errors with ``** 2`` (OverflowError past ~1.3e154): a model's
    finite but huge prediction is scored as an error of ERROR_CAP instead of stopping
    the stream."""
    from eddy.models.learners import Prediction
    from eddy.models.prequential import ERROR_CAP

    learner = StreamLearner("s", StreamSpec(model="linreg", task="regression"))
    for served in (Prediction(1e200), Prediction(-1e300), Prediction(2.0)):
        learner.apply([Learn({"a": 1.0}, 1.0, served, None)])
    values = learner.metrics.values()
    assert values["mae"] == pytest.approx((2 * ERROR_CAP + 1.0) / 3)
    assert values["rmse"] is not None and values["rmse"] > ERROR_CAP / 2
