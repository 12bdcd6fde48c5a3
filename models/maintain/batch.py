"""Batch training of a PyTorch model on a window of examples, with k-fold cross-validation.

:class:`BatchModel` holds everything needed to predict on raw features: the
feature order, standardization, the classes and the network. It is what the
retrainer registers (as a ``torch.save`` state) and what the exporter turns
into ONNX.
"""

from __future__ import annotations

import io
import itertools
from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Any

import numpy as np
import torch
from torch import nn

from eddy.models.exceptions import EddyError

Features = dict[Any, float] | list[float]


class TrainingError(EddyError):
    """Training could not run on the given window (too few examples, one class…)."""


def vectorize(
    rows: Sequence[Features], feature_names: list[str] | None = None
) -> tuple[np.ndarray, list[str]]:
    """Rows of features as a float32 matrix; columns follow ``feature_names`` (or are
    discovered in order of first appearance). Missing features are 0; text features
    are one-hot columns ``name=value`` (a value not among the columns is all 0);
    booleans are 0/1.

    >>> vectorize([{"x": 2.0, "color": "red", "ok": True}, {"x": 1.0, "color": "blue"}])
    (array([[2., 1., 1., 0.],
           [1., 0., 0., 1.]], dtype=float32), ['x', 'color=red', 'ok', 'color=blue'])
    """
    names = list(feature_names) if feature_names is not None else []
    index = {n: i for i, n in enumerate(names)}
    grow = feature_names is None
    cells: list[tuple[int, int, float]] = []
    for i, row in enumerate(rows):
        items = row.items() if isinstance(row, dict) else enumerate(row)
        for key, raw in items:
            if isinstance(raw, str):
                name, value = f"{key}={raw}", 1.0
            else:
                name, value = str(key), raw
            j = index.get(name)
            if j is None:
                if not grow:
                    continue
                j = index[name] = len(names)
                names.append(name)
            cells.append((i, j, float(value)))
    matrix = np.zeros((len(rows), len(names)), dtype=np.float32)
    if cells:
        r, c, v = zip(*cells, strict=True)
        matrix[list(r), list(c)] = v
    return matrix, names


@dataclass
class TrainParams:
    """Hyperparameters of a batch model.

    ``epochs`` is a ceiling: training stops once the loss on the most recent
    ``validation`` fraction of the rows (held out of the fit) has not improved for
    ``patience`` epochs, and keeps the weights of its best epoch. ``patience`` 0
    trains every epoch on all rows.
    """

    hidden: tuple[int, ...] = (256, 256)
    epochs: int = 30
    lr: float = 0.003
    batch_size: int = 512
    weight_decay: float = 0.0
    seed: int = 42
    patience: int = 3
    validation: float = 0.1

    def as_dict(self) -> dict[str, Any]:
        """JSON-ready."""
        return {
            "hidden": list(self.hidden),
            "epochs": self.epochs,
            "lr": self.lr,
            "batch_size": self.batch_size,
            "weight_decay": self.weight_decay,
            "seed": self.seed,
            "patience": self.patience,
            "validation": self.validation,
        }


@dataclass
class BatchModel:
    """A trained network with its preprocessing."""

    task: str
    feature_names: list[str]
    classes: list[Any] | None
    mean: np.ndarray
    std: np.ndarray
    params: TrainParams
    net: nn.Module = field(repr=False)
    epochs_run: int = 0  # epochs trained (early stopping may end before params.epochs)
    validation_losses: list[float] = field(default_factory=list)  # per epoch, when stopping early

    def _logits(self, matrix: np.ndarray) -> torch.Tensor:
        x = torch.from_numpy(((matrix - self.mean) / self.std).astype(np.float32))
        with torch.no_grad():
            return self.net.eval()(x)

    def predict_matrix(self, matrix: np.ndarray) -> list[Any]:
        """Labels (classification) or values (regression) for a feature matrix."""
        out = self._logits(matrix)
        if self.task == "regression":
            return [float(v) for v in out[:, 0].numpy()]
        assert self.classes is not None
        return [self.classes[i] for i in out.argmax(dim=1).numpy()]

    def predict(self, rows: Sequence[Features]) -> list[Any]:
        """Predict raw feature rows."""
        return self.predict_matrix(vectorize(rows, self.feature_names)[0])

    def to_bytes(self) -> bytes:
        """The model as a ``torch.save`` payload of plain tensors and lists (no pickled classes)."""
        buffer = io.BytesIO()
        torch.save(
            {
                "task": self.task,
                "feature_names": self.feature_names,
                "classes": self.classes,
                "mean": torch.from_numpy(self.mean),
                "std": torch.from_numpy(self.std),
                "params": self.params.as_dict(),
                "state_dict": self.net.state_dict(),
            },
            buffer,
        )
        return buffer.getvalue()

    @classmethod
    def from_bytes(cls, data: bytes) -> BatchModel:
        """Load a model saved by :meth:`to_bytes` (``weights_only``: no code runs)."""
        state = torch.load(io.BytesIO(data), weights_only=True)
        params = TrainParams(**{**state["params"], "hidden": tuple(state["params"]["hidden"])})
        n_out = 1 if state["task"] == "regression" else len(state["classes"])
        net = _network(len(state["feature_names"]), n_out, params.hidden)
        net.load_state_dict(state["state_dict"])
        return cls(
            state["task"],
            state["feature_names"],
            state["classes"],
            state["mean"].numpy(),
            state["std"].numpy(),
            params,
            net,
        )


def _network(d: int, k: int, hidden: tuple[int, ...]) -> nn.Sequential:
    layers: list[nn.Module] = []
    width = d
    for h in hidden:
        layers += [nn.Linear(width, h), nn.ReLU()]
        width = h
    layers.append(nn.Linear(width, k))
    return nn.Sequential(*layers)


def train(
    matrix: np.ndarray,
    targets: Sequence[Any],
    task: str,
    feature_names: list[str],
    params: TrainParams | None = None,
    warm_start: BatchModel | None = None,
) -> BatchModel:
    """Train a network on ``matrix``; ``warm_start`` fine-tunes a compatible model's weights."""
    params = params or TrainParams()
    if len(targets) < 20:
        msg = f"need at least 20 examples to train, got {len(targets)}"
        raise TrainingError(msg)
    torch.manual_seed(params.seed)
    classes: list[Any] | None = None
    if task == "regression":
        y = torch.tensor([float(t) for t in targets], dtype=torch.float32)
    else:
        classes = sorted(set(targets), key=repr)
        if warm_start is not None and warm_start.classes is not None:
            classes = list(warm_start.classes) + [c for c in classes if c not in warm_start.classes]
        if len(classes) < 2:
            msg = f"need at least two classes to train a classifier, got {classes}"
            raise TrainingError(msg)
        index = {c: i for i, c in enumerate(classes)}
        y = torch.tensor([index[t] for t in targets])
    compatible = (
        warm_start is not None
        and warm_start.feature_names == feature_names
        and warm_start.params.hidden == params.hidden
        and (classes is None or warm_start.classes == classes)
    )
    if compatible:
        assert warm_start is not None
        mean, std = warm_start.mean, warm_start.std
        net = _network(matrix.shape[1], 1 if classes is None else len(classes), params.hidden)
        net.load_state_dict(warm_start.net.state_dict())
    else:
        mean = matrix.mean(axis=0)
        std = matrix.std(axis=0)
        std[std == 0] = 1.0
        net = _network(matrix.shape[1], 1 if classes is None else len(classes), params.hidden)
    x = torch.from_numpy(((matrix - mean) / std).astype(np.float32))
    n_fit = len(y)
    if params.patience > 0:
        # The most recent rows validate: a window is a slice of a time series.
        n_fit = min(len(y) - 1, max(1, int(len(y) * (1 - params.validation))))
    optimizer = torch.optim.Adam(net.parameters(), lr=params.lr, weight_decay=params.weight_decay)
    generator = torch.Generator().manual_seed(params.seed)
    best_state, since_best, epochs_run = None, 0, 0
    losses: list[float] = []
    for _ in range(params.epochs):
        net.train()
        order = torch.randperm(n_fit, generator=generator)
        for start in range(0, n_fit, params.batch_size):
            batch = order[start : start + params.batch_size]
            loss = _loss(net(x[batch]), y[batch], classes is None)
            optimizer.zero_grad()
            loss.backward()
            optimizer.step()
        epochs_run += 1
        if params.patience <= 0:
            continue
        with torch.no_grad():
            val_loss = float(_loss(net.eval()(x[n_fit:]), y[n_fit:], classes is None))
        losses.append(val_loss)
        if val_loss <= min(losses):
            since_best = 0
            best_state = {k: v.clone() for k, v in net.state_dict().items()}
        else:
            since_best += 1
            if since_best >= params.patience:
                break
    if best_state is not None:
        net.load_state_dict(best_state)
    net.eval()
    return BatchModel(
        task,
        feature_names,
        classes,
        mean.astype(np.float32),
        std.astype(np.float32),
        params,
        net,
        epochs_run,
        losses,
    )


def _loss(out: torch.Tensor, y: torch.Tensor, regression: bool) -> torch.Tensor:
    if regression:
        return nn.functional.mse_loss(out[:, 0], y)
    return nn.functional.cross_entropy(out, y)


def score(model: BatchModel, matrix: np.ndarray, targets: Sequence[Any]) -> float:
    """Accuracy (classification) or negative MAE (regression): higher is better."""
    predictions = model.predict_matrix(matrix)
    if model.task == "regression":
        return -float(
            np.mean([abs(p - float(t)) for p, t in zip(predictions, targets, strict=True)])
        )
    return float(np.mean([p == t for p, t in zip(predictions, targets, strict=True)]))


def cross_validate(
    matrix: np.ndarray,
    targets: Sequence[Any],
    task: str,
    feature_names: list[str],
    params: TrainParams,
    folds: int = 5,
    warm_start: BatchModel | None = None,
) -> list[float]:
    """k-fold cross-validation scores (contiguous folds: the window is a time series slice)."""
    n = len(targets)
    bounds = np.linspace(0, n, folds + 1, dtype=int)
    scores = []
    for lo, hi in itertools.pairwise(bounds):
        keep = np.r_[0:lo, hi:n]
        model = train(
            matrix[keep], [targets[i] for i in keep], task, feature_names, params, warm_start
        )
        scores.append(score(model, matrix[lo:hi], targets[lo:hi]))
    return scores
