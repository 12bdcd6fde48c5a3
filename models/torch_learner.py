"""A PyTorch mini-batch SGD learner for streams: eddy's linear model or small MLP, or the
user's own module (:class:`~eddy.models.learners.TorchModel`).

Examples are collected into mini-batches of ``batch_size``; each full batch is one
optimizer step on its mean loss (which is *not* the same as learning each example on
its own: River issue #1912). Predictions use the weights of the last step, so a
prediction never reflects an example of the batch being collected. Features are
standardized with running means and variances (updated with each step). Text
features are one-hot encoded as ``name=value`` columns and booleans count as 0/1.
With eddy's own network, feature columns and classes may appear at any time and the
network grows to fit them, new weights starting at zero so earlier predictions are
unchanged.

The guard: a step that leaves any weight or statistic non-finite is undone; each
example of the batch is then tried alone to find the culprits, which are refused
(reason ``non_finite``), and the step is redone without them.
"""

from __future__ import annotations

import copy
import math
import time
from collections.abc import Sequence
from typing import Any

import numpy as np
import torch
from torch import nn

from eddy.models.kernels.columns import columns_of
from eddy.models.learners import LEARN_ERROR, NON_FINITE, Features, Prediction, Refused, TorchModel


def encode_value(name: Any, value: Any) -> tuple[Any, float]:
    """The column and number a feature value becomes: text is one-hot (``name=value``),
    booleans and numbers are themselves.

    >>> encode_value("color", "red"), encode_value("ok", True), encode_value("x", 2)
    (('color=red', 1.0), ('ok', 1.0), ('x', 2.0))
    """
    if isinstance(value, str):
        return f"{name}={value}", 1.0
    return name, float(value)


class TorchLearner:
    """Online mini-batch learner; ``task`` is binary, multiclass or regression."""

    per_example = False

    def __init__(self, task: str, spec: TorchModel | None = None, batch_size: int = 256) -> None:
        if task not in ("binary", "multiclass", "regression"):
            msg = f"unknown task {task!r}"
            raise ValueError(msg)
        self.task = task
        self.spec = spec or TorchModel()
        self.batch_size = batch_size
        self.features: dict[Any, int] = {}
        self.classes: list[Any] = []
        self._class_index: dict[Any, int] = {}
        if self.spec.module is not None and task != "regression":
            fixed = self.spec.classes or ((False, True) if task == "binary" else None)
            if not fixed:
                msg = "a multiclass TorchModel with your own module needs classes=(...)"
                raise ValueError(msg)
            self.classes = list(fixed)
            self._class_index = {c: i for i, c in enumerate(self.classes)}
        self.seen = 0
        self._mean = np.zeros(0)
        self._m2 = np.zeros(0)
        self._y_mean = 0.0
        self._y_m2 = 0.0
        self._generator = torch.Generator().manual_seed(self.spec.seed)
        self.net: nn.Module | None = None
        self._optimizer: Any = None
        self._pending: list[tuple[Features, Any, Any]] = []
        self._refused: list[Refused] = []
        self.predict_seconds = 0.0

    @property
    def hidden(self) -> int:
        """Width of eddy's own network's hidden layer (0: linear)."""
        return self.spec.hidden

    # Factories are configuration: a restored learner gets them again from its stream's
    # spec (see :meth:`bind`); the optimizer travels as its state_dict.
    def __getstate__(self) -> dict[str, Any]:
        state = dict(self.__dict__)
        state["spec"] = None
        state["_optimizer"] = self._optimizer.state_dict() if self._optimizer is not None else None
        state["_refused"] = []
        return state

    def __setstate__(self, state: dict[str, Any]) -> None:
        self.__dict__.update(state)
        self._optimizer_state = self.__dict__.pop("_optimizer")
        self._optimizer = None
        self.spec = TorchModel()

    def bind(self, spec: TorchModel) -> None:
        """Give a restored learner its stream's factories back."""
        self.spec = spec
        state = getattr(self, "_optimizer_state", None)
        if self.net is not None and spec.optimizer is not None:
            self._optimizer = spec.optimizer(self.net.parameters())
            if state is not None:
                self._optimizer.load_state_dict(state)
        self._optimizer_state = None

    # -- shapes ------------------------------------------------------------------------------

    @property
    def n_outputs(self) -> int:
        """Output units: one for regression, one per class otherwise."""
        return 1 if self.task == "regression" else len(self.classes)

    @property
    def fixed_columns(self) -> bool:
        """The user's module has a fixed input width: new features are ignored."""
        return self.spec.module is not None and self.net is not None

    def _matrix(self, xs: Sequence[Features], grow: bool) -> np.ndarray:
        """One float32 row per sample over the learner's columns (one tensor per step)."""
        index = self.features
        if index and xs:
            known = self._known_columns(xs)
            if known is not None:
                return known
        grow = grow and not self.fixed_columns
        cells: list[tuple[int, int, float]] = []
        for i, x in enumerate(xs):
            items = x.items() if isinstance(x, dict) else enumerate(x)
            for name, value in items:
                column, number = encode_value(name, value)
                j = index.get(column)
                if j is None:
                    if not grow:
                        continue  # a column never learned carries no weight yet
                    j = index[column] = len(index)
                cells.append((i, j, number))
        out = np.zeros((len(xs), len(index)), dtype=np.float32)
        if cells:
            rows, cols, values = zip(*cells, strict=True)
            with np.errstate(all="ignore"):  # beyond float32: inf, for the guard to refuse
                out[list(rows), list(cols)] = values
        return out

    def _known_columns(self, xs: Sequence[Features]) -> np.ndarray | None:
        """The matrix built from the batch's columns (compiled, :func:`columns_of`) when
        every feature of the batch has its column already; ``None`` sends the batch to
        the general path (a column to grow, in the order that path gives it; a text
        column named like a number). Absent features are 0, as there."""
        index = self.features
        columns = columns_of(xs)
        where = [index.get(name) for name in columns.names]
        if None in where:
            return None
        text_cells: list[tuple[int, int]] = []
        if columns.text is not None:
            numeric = set(columns.names)
            for i, row in enumerate(columns.text):
                for name, value in (row or {}).items():
                    column = f"{name}={value}"
                    j = index.get(column)
                    if j is None or column in numeric:
                        return None
                    text_cells.append((i, j))
        out = np.zeros((len(xs), len(index)), dtype=np.float32)
        with np.errstate(all="ignore"):  # beyond float32: inf, for the guard to refuse
            out[:, where] = columns.values
        for i, j in text_cells:
            out[i, j] = 1.0
        return out

    def _standardize(self, matrix: np.ndarray) -> torch.Tensor:
        d = matrix.shape[1]
        mean = self._mean[:d]
        with np.errstate(all="ignore"):  # non-finite input is the guard's to refuse
            std = np.sqrt(self._m2[:d] / max(self.seen - 1, 1))
            std[std == 0] = 1.0
            return torch.from_numpy(((matrix - mean) / std).astype(np.float32))

    def _ensure_net(self) -> None:
        d, k = len(self.features), self.n_outputs
        if k == 0 or d == 0:
            return
        if self.net is None:
            self.net = self._build(d, k)
            if self.spec.optimizer is not None:
                self._optimizer = self.spec.optimizer(self.net.parameters())
            return
        if self.spec.module is not None:
            return  # the user's module keeps its shape
        first, last = self._layers()
        if first.in_features < d:
            self._replace(first, _grow(first, in_features=d))
        first, last = self._layers()
        if last.out_features < k:
            self._replace(last, _grow(last, out_features=k))

    def _build(self, d: int, k: int) -> nn.Module:
        if self.spec.module is not None:
            torch.manual_seed(self.spec.seed)
            return self.spec.module(d, k)
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

    # -- predicting --------------------------------------------------------------------------

    def predict_many(self, xs: Sequence[Features]) -> list[Prediction]:
        """Predict a batch with the weights of the last step."""
        started = time.perf_counter()
        out = self._predict(self._matrix(xs, grow=False)) if xs else []
        self.predict_seconds += time.perf_counter() - started
        return out

    def _predict(self, matrix: np.ndarray) -> list[Prediction]:
        if self.net is None:  # nothing learned yet: no answer, as River's classifiers
            return [Prediction(None, None if self.task == "regression" else {})] * len(matrix)
        with torch.no_grad():
            out = self.net(self._standardize(matrix))
        if self.task == "regression":
            scale = math.sqrt(self._y_m2 / max(self.seen - 1, 1)) or 1.0
            values = (out[:, 0].numpy() * scale + self._y_mean).tolist()
            return [Prediction(v) if math.isfinite(v) else Prediction(None) for v in values]
        probs = torch.softmax(out, dim=1).numpy()
        classes = self.classes
        finite = np.isfinite(probs).all(axis=1).tolist()
        return [
            Prediction(classes[best], dict(zip(classes, row, strict=False)))
            if ok
            else Prediction(None, {})
            for best, row, ok in zip(
                probs.argmax(axis=1).tolist(), probs.tolist(), finite, strict=True
            )
        ]

    # -- learning ----------------------------------------------------------------------------

    def will_step(self, n: int = 1) -> bool:
        """Whether learning ``n`` more examples takes a step (changes predictions)."""
        return len(self._pending) + n >= self.batch_size

    def learn_many(self, xs: Sequence[Features], ys: Sequence[Any], refs: Sequence[Any]) -> None:
        """Collect the examples; take a step for every full mini-batch."""
        for x, y, ref in zip(xs, ys, refs, strict=True):
            if (
                self.task != "regression"
                and self.spec.module is not None
                and y not in self._class_index
            ):
                known = ", ".join(map(repr, self.classes))
                message = f"class {y!r} is not one of the module's classes ({known})"
                self._refused.append(Refused(ref, LEARN_ERROR, message))
                continue
            self._pending.append((x, y, ref))
            if len(self._pending) >= self.batch_size:
                self._step_pending()

    def flush(self) -> None:
        """Take a step on the examples collected so far (a partial mini-batch)."""
        if self._pending:
            self._step_pending()

    def take_refused(self) -> list[Refused]:
        """Examples refused since the last call."""
        out, self._refused = self._refused, []
        return out

    def _step_pending(self) -> None:
        batch, self._pending = self._pending, []
        before = self._snapshot()
        try:
            ok = self._learn(batch)
        except Exception as ex:  # noqa: BLE001 - a user module may raise anything
            ok, error = False, f"{type(ex).__name__}: {ex}"
        else:
            error = ""
        if ok:
            return
        self._restore(before)
        culprits = []
        for i, item in enumerate(batch):
            trial = copy.deepcopy(before)
            self._restore(trial)
            try:
                alone = self._learn([item])
            except Exception as ex:  # noqa: BLE001 - this example is the culprit
                alone, error = False, f"{type(ex).__name__}: {ex}"
            if not alone:
                culprits.append(i)
        self._restore(before)
        reason, message = (
            (LEARN_ERROR, error) if error else (NON_FINITE, "learning it made weights non-finite")
        )
        rest = [item for i, item in enumerate(batch) if i not in set(culprits)]
        if not culprits or (rest and not self._learn(rest)):
            self._restore(before)  # the batch fails only together: refuse all of it
            culprits, rest = list(range(len(batch))), []
        self._refused.extend(Refused(batch[i][2], reason, message) for i in culprits)

    def _learn(self, batch: list[tuple[Features, Any, Any]]) -> bool:
        """One step on ``batch``; whether every weight and statistic stayed finite."""
        xs = [x for x, _, _ in batch]
        ys = [y for _, y, _ in batch]
        matrix = self._matrix(xs, grow=True)
        if self.task != "regression" and self.spec.module is None:
            for y in ys:
                if y not in self._class_index:
                    self._class_index[y] = len(self.classes)
                    self.classes.append(y)
        self._update_stats(matrix, ys)
        self._ensure_net()
        if self.net is None:
            return self._finite()
        out = self.net(self._standardize(matrix))
        if self.task == "regression":
            scale = math.sqrt(self._y_m2 / max(self.seen - 1, 1)) or 1.0
            target = torch.tensor([(y - self._y_mean) / scale for y in ys], dtype=torch.float32)
            loss_fn = self.spec.loss or (lambda o, t: nn.functional.mse_loss(o[:, 0], t))
        else:
            target = torch.tensor([self._class_index[y] for y in ys])
            loss_fn = self.spec.loss or nn.functional.cross_entropy
        loss = loss_fn(out, target)
        if self._optimizer is not None:
            self._optimizer.zero_grad()
            loss.backward()
            self._optimizer.step()
        else:
            self.net.zero_grad()
            loss.backward()
            with torch.no_grad():
                for p in self.net.parameters():
                    if p.grad is not None:
                        p -= self.spec.lr * (p.grad + self.spec.weight_decay * p)
        return bool(torch.isfinite(loss)) and self._finite()

    def _finite(self) -> bool:
        stats = np.isfinite(self._mean).all() and np.isfinite(self._m2).all()
        target = math.isfinite(self._y_mean) and math.isfinite(self._y_m2)
        weights = self.net is None or all(
            bool(torch.isfinite(p).all()) for p in self.net.parameters()
        )
        return bool(stats and target and weights)

    def _snapshot(self) -> dict[str, Any]:
        keep = ("features", "classes", "_class_index", "seen", "_mean", "_m2", "_y_mean", "_y_m2")
        snap = {k: copy.copy(getattr(self, k)) for k in keep}
        snap["net"] = copy.deepcopy(self.net)
        snap["optimizer"] = (
            copy.deepcopy(self._optimizer.state_dict()) if self._optimizer is not None else None
        )
        return snap

    def _restore(self, snap: dict[str, Any]) -> None:
        for k, v in snap.items():
            if k not in ("net", "optimizer"):
                setattr(self, k, copy.copy(v))
        self.net = copy.deepcopy(snap["net"])
        if self.net is not None and self.spec.optimizer is not None:
            self._optimizer = self.spec.optimizer(self.net.parameters())
            if snap["optimizer"] is not None:
                self._optimizer.load_state_dict(snap["optimizer"])

    def _update_stats(self, matrix: np.ndarray, ys: Sequence[Any]) -> None:
        # Chan et al.'s parallel update of running mean and M2, per feature.
        d = matrix.shape[1]
        if self._mean.shape[0] < d:
            self._mean = np.pad(self._mean, (0, d - self._mean.shape[0]))
            self._m2 = np.pad(self._m2, (0, d - self._m2.shape[0]))
        n_a, n_b = self.seen, matrix.shape[0]
        with np.errstate(all="ignore"):  # non-finite input is the guard's to refuse
            self._merge_stats(matrix.astype(np.float64), ys, n_a, n_b)

    def _merge_stats(self, matrix64: np.ndarray, ys: Sequence[Any], n_a: int, n_b: int) -> None:
        mean_b = matrix64.mean(axis=0)
        m2_b = ((matrix64 - mean_b) ** 2).sum(axis=0)
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
