"""Data the unit tests of the batch models share."""

from __future__ import annotations

import numpy as np


def three_classes(n: int, seed: int = 0) -> tuple[np.ndarray, list[int]]:
    """``n`` rows of 8 normal features and a class in {0, 1, 2} from a nonlinear score of
    the first six, with noise: a task a network learns and a linear model does not."""
    rng = np.random.default_rng(seed)
    x = rng.normal(size=(n, 8)).astype(np.float32)
    s = np.stack(
        [x[:, 0] * x[:, 1], np.sin(2 * x[:, 2]) + x[:, 3], x[:, 4] ** 2 - 1 + 0.5 * x[:, 5]], 1
    )
    s += rng.normal(scale=0.3, size=s.shape)
    return x, [int(v) for v in s.argmax(1)]
