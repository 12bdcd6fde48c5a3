"""Comparing a candidate with the champion on the same held-out examples.

Classification: McNemar's test on the paired right/wrong outcomes (exact
binomial for up to 1,000 discordant pairs, chi-square with continuity correction
beyond), plus percentile-bootstrap confidence intervals of both accuracies.
Regression: a paired bootstrap of the difference in absolute error.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import asdict, dataclass
from typing import Any

import numpy as np


@dataclass(frozen=True)
class Comparison:
    """The outcome of a champion/challenger comparison."""

    metric: str
    champion: float | None
    candidate: float
    champion_ci: tuple[float, float] | None
    candidate_ci: tuple[float, float]
    p_value: float | None
    test: str
    n: int
    better: bool
    significant: bool

    def as_dict(self) -> dict[str, Any]:
        """JSON-ready."""
        return asdict(self)


def mcnemar_p(champion_right: Sequence[bool], candidate_right: Sequence[bool]) -> float:
    """Two-sided p-value of McNemar's test on paired outcomes."""
    b = sum(1 for a, c in zip(champion_right, candidate_right, strict=True) if a and not c)
    c = sum(1 for a, d in zip(champion_right, candidate_right, strict=True) if d and not a)
    n = b + c
    if n == 0:
        return 1.0
    if n <= 1000:
        k = min(b, c)
        tail = sum(math.comb(n, i) for i in range(k + 1)) / 2**n
        return min(1.0, 2 * tail)
    chi2 = (abs(b - c) - 1) ** 2 / n
    return math.erfc(math.sqrt(chi2 / 2))


def bootstrap_ci(
    values: np.ndarray, rounds: int = 1000, level: float = 0.95, seed: int = 7
) -> tuple[float, float]:
    """Percentile bootstrap interval of the mean of ``values``."""
    rng = np.random.default_rng(seed)
    means = rng.choice(values, size=(rounds, len(values)), replace=True).mean(axis=1)
    alpha = (1 - level) / 2
    return float(np.quantile(means, alpha)), float(np.quantile(means, 1 - alpha))


def compare(
    task: str,
    targets: Sequence[Any],
    candidate: Sequence[Any],
    champion: Sequence[Any] | None,
    alpha: float = 0.05,
) -> Comparison:
    """Compare predictions on the same examples; ``champion`` None means there is none."""
    n = len(targets)
    if task == "regression":
        cand_err = np.abs(np.asarray(candidate, float) - np.asarray(targets, float))
        cand_ci = bootstrap_ci(cand_err)
        if champion is None:
            return Comparison(
                "mae", None, float(cand_err.mean()), None, cand_ci, None, "none", n, True, True
            )
        champ_err = np.abs(np.asarray(champion, float) - np.asarray(targets, float))
        diff_lo, _ = bootstrap_ci(champ_err - cand_err)
        better = float(cand_err.mean()) < float(champ_err.mean())
        return Comparison(
            "mae",
            float(champ_err.mean()),
            float(cand_err.mean()),
            bootstrap_ci(champ_err),
            cand_ci,
            None,
            "paired bootstrap",
            n,
            better,
            diff_lo > 0,
        )
    cand_right = np.asarray([p == t for p, t in zip(candidate, targets, strict=True)], float)
    cand_acc = float(cand_right.mean())
    if champion is None:
        return Comparison(
            "accuracy", None, cand_acc, None, bootstrap_ci(cand_right), None, "none", n, True, True
        )
    champ_right = np.asarray([p == t for p, t in zip(champion, targets, strict=True)], float)
    p = mcnemar_p(champ_right.astype(bool).tolist(), cand_right.astype(bool).tolist())
    better = cand_acc > float(champ_right.mean())
    return Comparison(
        "accuracy",
        float(champ_right.mean()),
        cand_acc,
        bootstrap_ci(champ_right),
        bootstrap_ci(cand_right),
        p,
        "mcnemar",
        n,
        better,
        better and p < alpha,
    )
