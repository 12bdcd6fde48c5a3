"""The compiled linear kernels (eddy.models.kernels) against River's own loop.

For each model, the same examples go through River one at a time
(``predict_proba_one``/``predict_one`` then ``learn_one``) and through
``CompiledLinear.apply`` in batches (predict row i, learn row i, in arrival order, as
eddy queues them), in the same process. Printed: microseconds per predict+learn for
each, their ratio, and whether every prediction was equal (it must be).

The kernel's time includes everything ``apply`` does per batch in Python (labels,
name mapping of a new FeatureColumns, result objects) but not building the
FeatureColumns (the batch decoder's job) nor turning results into River's dicts.

    .venv/bin/python bench/kernels.py [--n 20000] [--batch 512] [--repeat 3]
"""

from __future__ import annotations

import argparse
import itertools
import time
from collections.abc import Callable
from typing import Any

import numpy as np
from river import datasets, linear_model, optim, preprocessing
from river.datasets import synth

from eddy.models.catalogue import CATALOGUE
from eddy.models.kernels import LEARN, PREDICT, compile_river
from eddy.models.kernels.columns import columns_of


def cycle(dataset: Any, n: int) -> list[tuple[dict, Any]]:
    rows = [(dict(x), y) for x, y in dataset]
    return [rows[i % len(rows)] for i in range(n)]


def agrawal_text(n: int) -> list[tuple[dict, Any]]:
    out = []
    for x, y in itertools.islice(synth.Agrawal(seed=1), n):
        out.append(
            ({k: f"c{v}" if k in ("elevel", "car", "zipcode") else v for k, v in x.items()}, y)
        )
    return out


def river_loop(model: Any, task: str, stream: list[tuple[dict, Any]]) -> tuple[float, list[Any]]:
    predict = model.predict_one if task == "regression" else model.predict_proba_one
    learn = model.learn_one
    out = []
    started = time.perf_counter()
    for x, y in stream:
        out.append(predict(x))
        learn(x, y)
    return time.perf_counter() - started, out


def kernel_loop(
    make: Callable[[], Any], task: str, stream: list, batch: int
) -> tuple[float, list[Any]]:
    kernel = compile_river(make(), task)
    assert kernel is not None, "not recognised"
    prepared = []
    for lo in range(0, len(stream), batch):
        part = stream[lo : lo + batch]
        cols = columns_of([x for x, _ in part])
        n = len(part)
        ops = np.tile(np.array([PREDICT, LEARN], dtype=np.int8), n)
        rows = np.repeat(np.arange(n, dtype=np.int64), 2)
        ys = [y for _, y in part]
        labels = [ys[r] for r in rows] if task == "multiclass" else np.repeat(np.array(ys), 2)
        prepared.append((ops, cols, rows, labels))
    results = []
    started = time.perf_counter()
    for ops, cols, rows, labels in prepared:
        results.append(kernel.apply(ops, cols, rows, labels))
    spent = time.perf_counter() - started
    out: list[Any] = []
    for applied in results:
        assert applied.stopped_at is None, applied.reason
        out.extend(applied.river_all())
    return spent, out


MODELS: list[tuple[str, str, Callable[[], Any], Callable[[int], list]]] = [
    (
        "scaled logreg (Phishing)",
        "binary",
        lambda: preprocessing.StandardScaler() | linear_model.LogisticRegression(),
        lambda n: cycle(datasets.Phishing(), n),
    ),
    (
        "logreg (Phishing)",
        "binary",
        lambda: linear_model.LogisticRegression(optimizer=optim.SGD(0.01)),
        lambda n: cycle(datasets.Phishing(), n),
    ),
    (
        "softmax (ImageSegments)",
        "multiclass",
        lambda: preprocessing.StandardScaler() | linear_model.SoftmaxRegression(),
        lambda n: cycle(datasets.ImageSegments(), n),
    ),
    (
        "linreg (Friedman)",
        "regression",
        lambda: linear_model.LinearRegression(optimizer=optim.SGD(0.005)),
        lambda n: [(dict(x), y) for x, y in itertools.islice(synth.Friedman(seed=1), n)],
    ),
    (
        "catalogue scaled-logreg, text one-hot (Agrawal)",
        "binary",
        lambda: CATALOGUE["scaled-logreg"].factory("binary"),
        agrawal_text,
    ),
    (
        "scaled logreg, Adam (Phishing)",
        "binary",
        lambda: (
            preprocessing.StandardScaler()
            | linear_model.LogisticRegression(optimizer=optim.Adam(0.01))
        ),
        lambda n: cycle(datasets.Phishing(), n),
    ),
]


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--n", type=int, default=20_000, help="examples per model")
    parser.add_argument("--batch", type=int, default=512, help="examples per apply()")
    parser.add_argument("--repeat", type=int, default=3, help="best of this many runs")
    args = parser.parse_args()
    print(f"{args.n} examples per model, batches of {args.batch}, best of {args.repeat}")
    print(f"{'model':<50} {'River µs':>9} {'kernel µs':>10} {'ratio':>7}  equal")
    for name, task, make, data in MODELS:
        stream = data(args.n)
        river_s = min(river_loop(make(), task, stream)[0] for _ in range(args.repeat))
        _, expected = river_loop(make(), task, stream)
        runs = [kernel_loop(make, task, stream, args.batch) for _ in range(args.repeat)]
        kernel_s = min(s for s, _ in runs)
        equal = all(out == expected for _, out in runs)
        per_river = river_s / len(stream) * 1e6
        per_kernel = kernel_s / len(stream) * 1e6
        print(
            f"{name:<50} {per_river:9.2f} {per_kernel:10.3f} {per_river / per_kernel:6.0f}x  {equal}"
        )


if __name__ == "__main__":
    main()
