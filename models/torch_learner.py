"""A PyTorch mini-batch SGD learner (linear or a small MLP) for streams.

It predicts a whole mini-batch, then takes one SGD step on the batch's mean
gradient. Features are standardized with running means and variances (updated
after the prediction, so a batch never sees its own statistics); feature names
and classes may appear at any time, and the network grows to fit them, new
weights starting at zero so that earlier predictions are unchanged.
"""

from __future__ import annotations

import time
from collections.abc import Sequence
from operator import itemgetter
from typing import Any

import numpy as np
import torch
from torch import nn

from eddy.models.learners import Features, Prediction


class TorchLearner:
    """Online mini-batch learner; ``task`` is binary, multiclass or regression."""

    per_example = False
    name = "torch"

    def __init__(
        self,
        task: str,
        hidden: int = 0,
        lr: float = 0.05,
        seed: int = 42,
        weight_decay: float = 0.0,
    ) -> None:
        if task not in ("binary", "multiclass", "regression"):
            msg = f"unknown task {task!r}"
            raise ValueError(msg)
        self.task = task
        self.hidden = hidden
        self.lr = lr
        self.weight_decay = weight_decay
        self.features: dict[Any, int] = {}
        self.classes: list[Any] = []
        self._class_index: dict[Any, int] = {}
        self.seen = 0
        self._mean = np.zeros(0)
        self._m2 = np.zeros(0)
        self._y_mean = 0.0
        self._y_m2 = 0.0
        self._generator = torch.Generator().manual_seed(seed)
        self.net: nn.Module | None = None
        self.predict_seconds = 0.0

    # -- shapes ------------------------------------------------------------------------------

    @property
    def n_outputs(self) -> int:
        """Output units: one for regression, one per class seen so far otherwise."""
        return 1 if self.task == "regression" else len(self.classes)

    def _matrix(self, xs: Sequence[Features], grow: bool) -> np.ndarray:
        index = self.features
        n = len(index)
        if n and xs:
            # The usual batch: every row has exactly the known features. One C-level
            # pass instead of a Python loop per cell (4 µs a row here).
            names = tuple(index)  # insertion order is column order
            if all(type(x) is dict and len(x) == n for x in xs):
                get = itemgetter(*names)
                try:
                    return np.array([get(x) for x in xs], dtype=np.float32).reshape(len(xs), n)
                except KeyError:
                    pass  # other names than the known ones: the general path below
            elif names == tuple(range(n)) and all(type(x) is list and len(x) == n for x in xs):
                return np.array(xs, dtype=np.float32).reshape(len(xs), n)
        cells: list[tuple[int, int, float]] = []
        for i, x in enumerate(xs):
            items = x.items() if isinstance(x, dict) else enumerate(x)
            for name, value in items:
                j = index.get(name)
                if j is None:
                    if not grow:
                        continue  # a feature never learned carries no weight yet
                    j = index[name] = len(index)
                cells.append((i, j, value))
        out = np.zeros((len(xs), len(index)), dtype=np.float32)
        if cells:
            rows, cols, values = zip(*cells, strict=True)
            out[list(rows), list(cols)] = values
        return out

    def _standardize(self, matrix: np.ndarray) -> torch.Tensor:
        d = matrix.shape[1]
        mean = self._mean[:d]
        std = np.sqrt(self._m2[:d] / max(self.seen - 1, 1))
        std[std == 0] = 1.0
        return torch.from_numpy(((matrix - mean) / std).astype(np.float32))

    def _ensure_net(self) -> None:
        d, k = len(self.features), self.n_outputs
        if k == 0 or d == 0:
            return
        if self.net is None:
            self.net = self._build(d, k)
            return
        first, last = self._layers()
        if first.in_features < d:
            self._replace(first, _grow(first, in_features=d))
        first, last = self._layers()
        if last.out_features < k:
            self._replace(last, _grow(last, out_features=k))

    def _build(self, d: int, k: int) -> nn.Module:
        if self.hidden:
            net = nn.Sequential(nn.Linear(d, self.hidden), nn.ReLU(), nn.Linear(self.hidden, k))
            with torch.no_grad():
                for layer in (net[0], net[2]):
                    bound = 1.0 / np.sqrt(layer.in_features)
                    layer.weight.uniform_(-bound, bound, generator=self._generator)
                    layer.bias.zero_()
            return net
        net = nn.Sequential(nn.Linear(d, k))
        with torch.no_grad():
            net[0].weight.zero_()
            net[0].bias.zero_()
        return net

    def _layers(self) -> tuple[nn.Linear, nn.Linear]:
        assert self.net is not None
        linears = [m for m in self.net if isinstance(m, nn.Linear)]
        return linears[0], linears[-1]

    def _replace(self, old: nn.Linear, new: nn.Linear) -> None:
        assert self.net is not None
        for i, module in enumerate(self.net):
            if module is old:
                self.net[i] = new

    # -- learning ----------------------------------------------------------------------------

    def predict_many(self, xs: Sequence[Features]) -> list[Prediction]:
        """Predict a mini-batch with the current weights."""
        return self._predict(self._matrix(xs, grow=False))

    def _predict(self, matrix: np.ndarray) -> list[Prediction]:
        if self.net is None:  # nothing learned yet: 0.0 as River's regressors, no class
            if self.task == "regression":
                return [Prediction(0.0) for _ in range(len(matrix))]
            return [Prediction(None, {}) for _ in range(len(matrix))]
        with torch.no_grad():
            out = self.net(self._standardize(matrix))
        if self.task == "regression":
            scale = np.sqrt(self._y_m2 / max(self.seen - 1, 1)) or 1.0
            values = out[:, 0].numpy() * scale + self._y_mean
            return [Prediction(v) for v in values.tolist()]
        probs = torch.softmax(out, dim=1).numpy()
        classes = self.classes
        return [
            Prediction(classes[best], dict(zip(classes, row, strict=False)))
            for best, row in zip(probs.argmax(axis=1).tolist(), probs.tolist(), strict=True)
        ]

    def learn_many(self, xs: Sequence[Features], ys: Sequence[Any]) -> None:
        """One SGD step on the mini-batch's mean loss."""
        if xs:
            self._learn(self._matrix(xs, grow=True), ys)

    def _learn(self, matrix: np.ndarray, ys: Sequence[Any]) -> None:
        if self.task != "regression":
            for y in ys:
                if y not in self._class_index:
                    self._class_index[y] = len(self.classes)
                    self.classes.append(y)
        self._update_stats(matrix, ys)
        self._ensure_net()
        if self.net is None:
            return
        inputs = self._standardize(matrix)
        out = self.net(inputs)
        if self.task == "regression":
            scale = np.sqrt(self._y_m2 / max(self.seen - 1, 1)) or 1.0
            target = torch.tensor([(y - self._y_mean) / scale for y in ys], dtype=torch.float32)
            loss = nn.functional.mse_loss(out[:, 0], target)
        else:
            target = torch.tensor([self._class_index[y] for y in ys])
            loss = nn.functional.cross_entropy(out, target)
        self.net.zero_grad()
        loss.backward()
        with torch.no_grad():
            for p in self.net.parameters():
                if p.grad is not None:
                    p -= self.lr * (p.grad + self.weight_decay * p)

    def test_then_train(self, xs: Sequence[Features], ys: Sequence[Any]) -> list[Prediction]:
        """Predict the whole mini-batch, then learn it."""
        if not xs:
            return []
        learned = len(self.features)  # the network's inputs; new features come after
        matrix = self._matrix(xs, grow=True)
        started = time.perf_counter()
        predictions = self._predict(matrix[:, :learned])
        self.predict_seconds += time.perf_counter() - started
        self._learn(matrix, ys)
        return predictions

    def _update_stats(self, matrix: np.ndarray, ys: Sequence[Any]) -> None:
        # Chan et al.'s parallel update of running mean and M2, per feature.
        d = matrix.shape[1]
        if self._mean.shape[0] < d:
            self._mean = np.pad(self._mean, (0, d - self._mean.shape[0]))
            self._m2 = np.pad(self._m2, (0, d - self._m2.shape[0]))
        n_a, n_b = self.seen, matrix.shape[0]
        mean_b = matrix.mean(axis=0)
        m2_b = ((matrix - mean_b) ** 2).sum(axis=0)
        delta = mean_b - self._mean
        total = n_a + n_b
        self._mean = self._mean + delta * n_b / total
        self._m2 = self._m2 + m2_b + delta**2 * n_a * n_b / total
        if self.task == "regression":
            y = np.asarray(ys, dtype=np.float64)
            y_mean_b = float(y.mean())
            y_m2_b = float(((y - y_mean_b) ** 2).sum())
            y_delta = y_mean_b - self._y_mean
            self._y_mean += y_delta * n_b / total
            self._y_m2 += y_m2_b + y_delta**2 * n_a * n_b / total
        self.seen = total


def _grow(
    layer: nn.Linear, in_features: int | None = None, out_features: int | None = None
) -> nn.Linear:
    """A copy of ``layer`` with more inputs or outputs; the new weights are zero."""
    new = nn.Linear(in_features or layer.in_features, out_features or layer.out_features)
    with torch.no_grad():
        new.weight.zero_()
        new.bias.zero_()
        new.weight[: layer.out_features, : layer.in_features] = layer.weight
        new.bias[: layer.out_features] = layer.bias
    return new
