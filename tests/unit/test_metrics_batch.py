"""Prequential metrics per batch equal River's objects updated one example at a time:
the same floats (compared with ``==``) and the same dict orders, whatever the batches."""

from __future__ import annotations

import random
from typing import Any

from hypothesis import given, settings
from hypothesis import strategies as st

from eddy.models.metrics import MetricSet, PrequentialMetrics


def _state(obj: Any, depth: int = 0) -> Any:
    """Every attribute of a River metric, recursively, dict orders included."""
    if depth > 6:
        return repr(obj)
    if isinstance(obj, dict):
        return [(k, _state(v, depth + 1)) for k, v in obj.items()]
    if isinstance(obj, list | tuple):
        return [_state(v, depth + 1) for v in obj]
    if hasattr(obj, "__dict__") and not isinstance(obj, type):
        return (type(obj).__name__, [(k, _state(v, depth + 1)) for k, v in vars(obj).items()])
    return (type(obj).__name__, obj)


def _split(n: int, seed: int) -> list[tuple[int, int]]:
    rng = random.Random(seed)
    out, start = [], 0
    while start < n:
        end = min(n, start + rng.choice([1, 2, 5, 33, 400]))
        out.append((start, end))
        start = end
    return out


def _compare(task: str, scored: list[tuple[Any, Any, Any]], seed: int) -> None:
    one = MetricSet(task, cumulative=True)
    many = MetricSet(task, cumulative=True)
    for y, p, proba in scored:
        one.update(y, p, proba)
    for start, end in _split(len(scored), seed):
        chunk = scored[start:end]
        many.update_many([c[0] for c in chunk], [c[1] for c in chunk], [c[2] for c in chunk])
    assert many.n == one.n
    assert _state(many._by_label + many._by_proba) == _state(one._by_label + one._by_proba)
    assert many.values() == one.values()


probabilities = st.floats(0.0, 1.0, allow_nan=False) | st.sampled_from([0, 1, 1e-20, 1 - 1e-17])


@st.composite
def binary(draw: Any) -> list[tuple[Any, Any, Any]]:
    out = []
    for _ in range(draw(st.integers(0, 60))):
        y = draw(st.sampled_from([True, False, 0, 1]))
        p_true = draw(probabilities)
        proba = draw(st.sampled_from(["full", "none", "empty", "true-only"]))
        if proba == "full":
            d: Any = {False: 1 - p_true, True: p_true}
        elif proba == "true-only":
            d = {True: p_true}
        else:
            d = None if proba == "none" else {}
        out.append((y, draw(st.sampled_from([True, False, 1, 0])), d))
    return out


@st.composite
def multiclass(draw: Any) -> list[tuple[Any, Any, Any]]:
    classes = draw(
        st.lists(st.sampled_from(["a", "b", "c", 1, 2.0, True]), min_size=1, unique=True)
    )
    out = []
    for _ in range(draw(st.integers(0, 60))):
        known = draw(st.lists(st.sampled_from(classes), unique=True))
        proba = (
            {c: draw(probabilities) for c in known} if known else draw(st.sampled_from([None, {}]))
        )
        out.append((draw(st.sampled_from(classes)), draw(st.sampled_from(classes)), proba))
    return out


numbers = (
    st.floats(-1e6, 1e6, allow_nan=False)
    | st.integers(-(10**6), 10**6)
    | st.sampled_from([0, 0.0, -0.0, 1e100, -1e100, 1e-300])
)


@st.composite
def regression(draw: Any) -> list[tuple[Any, Any, Any]]:
    return [(draw(numbers), draw(numbers), None) for _ in range(draw(st.integers(0, 60)))]


@settings(max_examples=150, deadline=None)
@given(binary(), st.integers(0, 9))
def test_binary_batches_equal_rivers_updates(scored, seed) -> None:
    _compare("binary", scored, seed)


@settings(max_examples=150, deadline=None)
@given(multiclass(), st.integers(0, 9))
def test_multiclass_batches_equal_rivers_updates(scored, seed) -> None:
    _compare("multiclass", scored, seed)


@settings(max_examples=150, deadline=None)
@given(regression(), st.integers(0, 9))
def test_regression_batches_equal_rivers_updates(scored, seed) -> None:
    _compare("regression", scored, seed)


def test_long_streams_stay_equal() -> None:
    """Thousands of examples: rounding that drifts apart would show here."""
    rng = random.Random(7)
    binary_scored = []
    for _ in range(20_000):
        p = rng.random()
        binary_scored.append((rng.random() < p, p > 0.5, {False: 1 - p, True: p}))
    _compare("binary", binary_scored, 1)
    regression_scored = [(rng.gauss(0, 100), rng.gauss(0, 100), None) for _ in range(20_000)]
    _compare("regression", regression_scored, 2)


def test_prequential_update_many_keeps_the_recent_window() -> None:
    one, many = PrequentialMetrics("binary", window=5), PrequentialMetrics("binary", window=5)
    scored = [(i % 3 == 0, i % 2 == 0, {False: 0.4, True: 0.6}) for i in range(12)]
    for item in scored:
        one.update(*item)
    many.update_many([s[0] for s in scored], [s[1] for s in scored], [s[2] for s in scored])
    assert many.count == one.count == 12
    assert list(many.recent) == list(one.recent)
    assert many.values("rolling") == one.values("rolling")
    assert many.values() == one.values()
