"""Making a trained batch model smaller, and choosing the variant by measurement.

Three ways to shrink a :class:`~eddy.models.maintain.batch.BatchModel` (the *teacher*):

* :func:`distill` trains a smaller *student* network on the teacher's outputs;
* :func:`prune_structured` removes whole hidden units (a narrower dense network,
  which ONNX Runtime runs faster; :func:`eddy.models.maintain.export.prune` is the
  unstructured option, which zeroes weights but keeps every matrix its size);
* int8 dynamic quantization (:func:`eddy.models.maintain.export.quantize_int8`).

:func:`compress` builds the variants, measures each on held-out examples with
ONNX Runtime (size, accuracy or MAE, batch-1 latency, batch-256 throughput) and
picks the smallest int8 variant that passes the export gate.
"""

from __future__ import annotations

import copy
import dataclasses
import itertools
import math
import time
from dataclasses import dataclass, field
from typing import Any

import numpy as np
import torch
from torch import nn

from eddy.models.maintain.batch import BatchModel, TrainParams, _network
from eddy.models.maintain.export import (
    _interleaved_latency,
    onnx_quality,
    prune,
    quantize_int8,
    session,
    to_onnx,
)

FP32_BYTES_PER_PARAM = 4


def parameter_count(n_features: int, hidden: tuple[int, ...], n_outputs: int) -> int:
    """Weights and biases of the network :mod:`eddy.models.maintain.batch` builds for this shape."""
    widths = [n_features, *hidden, n_outputs]
    return sum(a * b + b for a, b in itertools.pairwise(widths))


def _outputs(model: BatchModel) -> int:
    return 1 if model.classes is None else len(model.classes)


def _count(model: BatchModel) -> int:
    return parameter_count(len(model.feature_names), model.params.hidden, _outputs(model))


def student_hidden_for(
    teacher: BatchModel, *, max_params: int | None = None, max_bytes: int | None = None
) -> tuple[int, ...]:
    """The largest student shape under a size target (give exactly one).

    ``max_bytes`` counts fp32 weights (4 bytes per parameter; the int8 artifact is
    about a quarter of that). Candidates have every layer the same width, a multiple
    of 8 up to the teacher's widest layer, no more layers than the teacher, and fewer
    parameters than the teacher; among those under the target the one with the most
    parameters wins (fewer layers on a tie). Raises :class:`ValueError` when no
    candidate fits.
    """
    if (max_params is None) == (max_bytes is None):
        msg = "give exactly one of max_params and max_bytes"
        raise ValueError(msg)
    if max_params is not None:
        limit = max_params
    else:
        assert max_bytes is not None
        limit = max_bytes // FP32_BYTES_PER_PARAM
    d, k = len(teacher.feature_names), _outputs(teacher)
    widest = max(teacher.params.hidden, default=8)
    step = 8 if widest >= 8 else 1
    ceiling = _count(teacher)
    candidates = [
        (width,) * depth
        for depth in range(1, max(1, len(teacher.params.hidden)) + 1)
        for width in range(step, widest + 1, step)
        if parameter_count(d, (width,) * depth, k) < ceiling
    ]
    fitting = [c for c in candidates if parameter_count(d, c, k) <= limit]
    if not fitting:
        smallest = min(parameter_count(d, c, k) for c in candidates) if candidates else ceiling
        msg = (
            f"no student shape has at most {limit} parameters (the smallest has {smallest}, "
            f"the teacher {ceiling}): raise the size target"
        )
        raise ValueError(msg)
    return max(fitting, key=lambda c: (parameter_count(d, c, k), -len(c)))


def _fit_to_teacher(
    teacher: BatchModel,
    net: nn.Module,
    x: torch.Tensor,
    *,
    epochs: int,
    lr: float,
    temperature: float,
    batch_size: int,
    seed: int,
) -> None:
    """Train ``net`` in place to reproduce the teacher's outputs on standardized rows ``x``.

    Classification: KL divergence between the temperature-softened class
    distributions, scaled by temperature² so gradients keep their size across
    temperatures. Regression: mean squared error to the teacher's predictions.
    """
    regression = teacher.task == "regression"
    with torch.no_grad():
        out = teacher.net.eval()(x)
        target = out[:, 0] if regression else torch.softmax(out / temperature, dim=1)
    optimizer = torch.optim.Adam(net.parameters(), lr=lr)
    generator = torch.Generator().manual_seed(seed)
    for _ in range(epochs):
        net.train()
        order = torch.randperm(len(x), generator=generator)
        for start in range(0, len(x), batch_size):
            batch = order[start : start + batch_size]
            predicted = net(x[batch])
            if regression:
                loss = nn.functional.mse_loss(predicted[:, 0], target[batch])
            else:
                log_p = nn.functional.log_softmax(predicted / temperature, dim=1)
                loss = nn.functional.kl_div(log_p, target[batch], reduction="batchmean")
                loss = loss * temperature**2
            optimizer.zero_grad()
            loss.backward()
            optimizer.step()
    net.eval()


def _standardized(model: BatchModel, matrix: np.ndarray) -> torch.Tensor:
    return torch.from_numpy(((matrix - model.mean) / model.std).astype(np.float32))


def distill(
    teacher: BatchModel,
    matrix: np.ndarray,
    *,
    hidden: tuple[int, ...],
    epochs: int = 60,
    lr: float = 0.003,
    temperature: float = 2.0,
    seed: int = 42,
    batch_size: int = 128,
) -> BatchModel:
    """A student network with ``hidden`` layers trained on the teacher's outputs for ``matrix``.

    ``matrix`` holds raw feature rows in the teacher's feature order (the
    retraining window); no labels are needed. The student keeps the teacher's
    features, standardization and classes, so it predicts, saves and exports
    (:func:`eddy.models.maintain.export.to_onnx`) like any batch model. It trains for
    exactly ``epochs`` epochs (``params.patience`` is 0). The global torch RNG is
    left as it was.
    """
    if len(matrix) == 0:
        msg = "distill needs at least one row"
        raise ValueError(msg)
    if not hidden or min(hidden) < 1 or temperature <= 0 or epochs < 1:
        msg = (
            f"need non-empty positive hidden widths, temperature > 0 and epochs >= 1, got "
            f"hidden={hidden}, temperature={temperature}, epochs={epochs}"
        )
        raise ValueError(msg)
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(seed)
        net = _network(len(teacher.feature_names), _outputs(teacher), tuple(hidden))
        _fit_to_teacher(
            teacher,
            net,
            _standardized(teacher, matrix),
            epochs=epochs,
            lr=lr,
            temperature=temperature,
            batch_size=batch_size,
            seed=seed,
        )
    params = TrainParams(
        hidden=tuple(hidden), epochs=epochs, lr=lr, batch_size=batch_size, seed=seed, patience=0
    )
    return BatchModel(
        teacher.task,
        list(teacher.feature_names),
        copy.copy(teacher.classes),
        teacher.mean.copy(),
        teacher.std.copy(),
        params,
        net,
        epochs,
    )


def prune_structured(model: BatchModel, fraction: float) -> BatchModel:
    """A copy of ``model`` without the ``fraction`` weakest units of each hidden layer.

    A unit's strength is the L2 norm of its incoming weights. Each hidden layer
    loses floor(fraction * width) units (keeping at least one) along with the
    matching columns of the next layer, so the result is a smaller dense network;
    ``params.hidden`` gives its new widths. ``model`` is not changed.
    """
    if not 0 <= fraction < 1:
        msg = f"fraction must be in [0, 1), got {fraction}"
        raise ValueError(msg)
    linears = [m for m in model.net if isinstance(m, nn.Linear)]
    if len(linears) != len(model.params.hidden) + 1:
        msg = (
            "prune_structured needs a network built by eddy.models.maintain.batch "
            "(Linear/ReLU layers)"
        )
        raise ValueError(msg)
    tensors = [(m.weight.detach().clone(), m.bias.detach().clone()) for m in linears]
    hidden = []
    for i in range(len(linears) - 1):
        weight, bias = tensors[i]
        width = weight.shape[0]
        n_keep = max(1, width - math.floor(width * fraction))
        keep = torch.linalg.vector_norm(weight, dim=1).topk(n_keep).indices.sort().values
        tensors[i] = (weight[keep], bias[keep])
        tensors[i + 1] = (tensors[i + 1][0][:, keep], tensors[i + 1][1])
        hidden.append(n_keep)
    net = _network(len(model.feature_names), _outputs(model), tuple(hidden))
    with torch.no_grad():
        for layer, (weight, bias) in zip(
            [m for m in net if isinstance(m, nn.Linear)], tensors, strict=True
        ):
            layer.weight.copy_(weight)
            layer.bias.copy_(bias)
    net.eval()
    return dataclasses.replace(
        model,
        params=dataclasses.replace(model.params, hidden=tuple(hidden)),
        net=net,
        mean=model.mean.copy(),
        std=model.std.copy(),
        classes=copy.copy(model.classes),
        feature_names=list(model.feature_names),
        validation_losses=list(model.validation_losses),
    )


@dataclass(frozen=True)
class DistillParams:
    """How :func:`compress` builds its student.

    ``hidden`` None picks :func:`student_hidden_for` with at most ``size_fraction``
    of the teacher's parameters.
    """

    hidden: tuple[int, ...] | None = None
    size_fraction: float = 0.25
    epochs: int = 60
    lr: float = 0.003
    temperature: float = 2.0
    batch_size: int = 128


@dataclass(frozen=True)
class VariantRow:
    """One measured variant. ``quality`` is accuracy or MAE (see the report's ``metric``);
    ``delta`` is quality minus the teacher fp32's; ``size_ratio`` is teacher fp32 bytes
    over this variant's bytes. ``passed`` is None for fp32 rows, which are references
    and never chosen (the exporter serves int8)."""

    name: str
    source: str  # "teacher" or "student"
    precision: str  # "fp32" or "int8"
    pruning: str  # "none", "structured" (whole units, L2 of incoming weights) or "magnitude"
    sparsity: float  # fraction of hidden units (structured) or weights (magnitude) removed
    fine_tune_epochs: int  # distillation epochs after structured pruning
    hidden: tuple[int, ...]
    params: int  # parameters of the dense network (magnitude-pruned zeros included)
    bytes: int
    size_ratio: float
    quality: float
    delta: float
    batch1_us: float
    batch256_per_s: float
    passed: bool | None
    gate_reason: str

    def as_dict(self) -> dict[str, Any]:
        """JSON-ready."""
        return dataclasses.asdict(self) | {"hidden": list(self.hidden)}


@dataclass(frozen=True)
class CompressionReport:
    """Every variant measured on the same holdout, and the chosen one.

    ``chosen`` is the name of the smallest int8 variant that passes the gate (None
    when none does; ``reason`` says why). ``chosen_onnx`` holds its int8 ONNX bytes and
    ``chosen_model`` the fp32 :class:`BatchModel` it was quantized from (the teacher
    itself for teacher-int8); both are left out of :meth:`as_dict`.
    """

    task: str
    metric: str  # "accuracy" or "mae"
    max_delta: float
    min_size_ratio: float
    train_rows: int
    holdout_rows: int
    variants: tuple[VariantRow, ...]
    chosen: str | None
    reason: str
    seconds: float
    chosen_onnx: bytes | None = field(default=None, repr=False)
    chosen_model: BatchModel | None = field(default=None, repr=False)

    def row(self, name: str) -> VariantRow:
        """The variant called ``name``."""
        for variant in self.variants:
            if variant.name == name:
                return variant
        raise KeyError(name)

    def as_dict(self) -> dict[str, Any]:
        """JSON-ready, for a model card (no artifact bytes)."""
        return {
            "task": self.task,
            "metric": self.metric,
            "gate": {"max_delta": self.max_delta, "min_size_ratio": self.min_size_ratio},
            "train_rows": self.train_rows,
            "holdout_rows": self.holdout_rows,
            "chosen": self.chosen,
            "reason": self.reason,
            "seconds": self.seconds,
            "variants": [v.as_dict() for v in self.variants],
        }

    def table(self) -> str:
        """A plain-text table of the variants; ``*`` marks the chosen one."""
        header = (
            "variant",
            "pruning",
            "hidden",
            "bytes",
            "ratio",
            self.metric,
            "delta",
            "b1 µs",
            "b256 rows/s",
            "gate",
        )
        lines = [header]
        for v in self.variants:
            gate = "-" if v.passed is None else ("pass" if v.passed else "fail")
            pruning = v.pruning if v.pruning == "none" else f"{v.pruning} {v.sparsity:.0%}"
            lines.append(
                (
                    ("* " if v.name == self.chosen else "  ") + v.name,
                    pruning,
                    "x".join(map(str, v.hidden)),
                    str(v.bytes),
                    f"{v.size_ratio:.2f}",
                    f"{v.quality:.4f}",
                    f"{v.delta:+.4f}",
                    f"{v.batch1_us:.1f}",
                    f"{v.batch256_per_s:,.0f}",
                    gate,
                )
            )
        widths = [max(len(line[i]) for line in lines) for i in range(len(header))]
        text = [
            "  ".join(c.ljust(w) for c, w in zip(line, widths, strict=True)).rstrip()
            for line in lines
        ]
        text.append(f"chosen: {self.chosen or 'none'} ({self.reason})")
        return "\n".join(text)


@dataclass
class _Variant:
    name: str
    source: str
    model: BatchModel
    precision: str
    pruning: str = "none"
    sparsity: float = 0.0
    fine_tune_epochs: int = 0
    onnx: bytes = b""


def compress(
    teacher: BatchModel,
    train_matrix: np.ndarray,
    holdout_matrix: np.ndarray,
    holdout_targets: list[Any],
    *,
    max_delta: float,
    min_size_ratio: float,
    ladder: tuple[float, ...] = (0.25, 0.5, 0.75),
    student: DistillParams | None = None,
    fine_tune_epochs: int = 5,
    magnitude: bool = False,
    seed: int = 42,
    timing_rounds: int = 9,
    with_student: bool = True,
    magnitude_ladder: tuple[float, ...] | None = None,
) -> CompressionReport:
    """Build, measure and gate the compressed variants of ``teacher``.

    Variants: teacher fp32 and int8; a student distilled on ``train_matrix`` (the
    retraining window, raw features) in fp32 and int8; for each fraction in
    ``ladder`` the teacher structurally pruned by that fraction, fine-tuned for
    ``fine_tune_epochs`` epochs on the teacher's outputs, in int8; with
    ``magnitude``, also the teacher magnitude-pruned by each fraction of
    ``magnitude_ladder`` (default: ``ladder``; :func:`eddy.models.maintain.export.prune`, no
    fine-tuning) in int8. ``with_student`` False leaves the student out (no distillation).

    Each is measured with ONNX Runtime on the holdout. An int8 variant passes the
    gate when its size ratio against teacher fp32 is at least ``min_size_ratio`` and
    it is worse than teacher fp32 by at most ``max_delta`` (accuracy points as a
    fraction, or MAE units), as in the exporter's gate. The chosen variant is the
    smallest passing one (fewer bytes; better quality on a tie). Latencies are
    medians of ``timing_rounds`` interleaved rounds (see ``export._interleaved_latency``).
    """
    started = time.monotonic()
    if len(holdout_matrix) == 0 or len(holdout_matrix) != len(holdout_targets):
        msg = (
            f"need a non-empty holdout with one target per row, got {len(holdout_matrix)} rows "
            f"and {len(holdout_targets)} targets"
        )
        raise ValueError(msg)
    magnitude_ladder = ladder if magnitude_ladder is None else magnitude_ladder
    for name, levels in (("ladder", ladder), ("magnitude_ladder", magnitude_ladder)):
        if any(not 0 < s < 1 for s in levels) or len(set(levels)) != len(levels):
            msg = f"{name} fractions must be distinct and in (0, 1), got {levels}"
            raise ValueError(msg)
    student = student or DistillParams()
    variants = [
        _Variant("teacher-fp32", "teacher", teacher, "fp32"),
        _Variant("teacher-int8", "teacher", teacher, "int8"),
    ]
    if with_student:
        hidden = student.hidden or student_hidden_for(
            teacher, max_params=int(_count(teacher) * student.size_fraction)
        )
        distilled = distill(
            teacher,
            train_matrix,
            hidden=hidden,
            epochs=student.epochs,
            lr=student.lr,
            temperature=student.temperature,
            seed=seed,
            batch_size=student.batch_size,
        )
        variants += [
            _Variant("student-fp32", "student", distilled, "fp32"),
            _Variant("student-int8", "student", distilled, "int8"),
        ]
    x_train = _standardized(teacher, train_matrix)
    for fraction in ladder:
        pruned = prune_structured(teacher, fraction)
        if fine_tune_epochs > 0:
            with torch.random.fork_rng(devices=[]):
                torch.manual_seed(seed)
                _fit_to_teacher(
                    teacher,
                    pruned.net,
                    x_train,
                    epochs=fine_tune_epochs,
                    lr=student.lr,
                    temperature=student.temperature,
                    batch_size=student.batch_size,
                    seed=seed,
                )
        name = f"structured-{round(fraction * 100)}-int8"
        variants.append(
            _Variant(name, "teacher", pruned, "int8", "structured", fraction, fine_tune_epochs)
        )
    if magnitude:
        for fraction in magnitude_ladder:
            zeroed = dataclasses.replace(teacher, net=copy.deepcopy(teacher.net))
            prune(zeroed, fraction)
            name = f"magnitude-{round(fraction * 100)}-int8"
            variants.append(_Variant(name, "teacher", zeroed, "int8", "magnitude", fraction))
    fp32: dict[int, bytes] = {}  # one export per distinct model
    for v in variants:
        if id(v.model) not in fp32:
            fp32[id(v.model)] = to_onnx(v.model)
        v.onnx = fp32[id(v.model)] if v.precision == "fp32" else quantize_int8(fp32[id(v.model)])

    rows = _measure(teacher, variants, holdout_matrix, holdout_targets, timing_rounds)
    gated = [_gate(row, teacher.task, max_delta, min_size_ratio) for row in rows]
    passing = [r for r in gated if r.passed]
    metric = "mae" if teacher.task == "regression" else "accuracy"
    if passing:
        best = min(passing, key=lambda r: (r.bytes, _loss(r, teacher.task)))
        chosen: _Variant | None = next(v for v in variants if v.name == best.name)
        reason = (
            f"smallest int8 variant within the gate: {best.bytes} bytes, "
            f"{best.size_ratio:.2f}x smaller, {metric} {best.delta:+.4f}"
        )
    else:
        chosen = None
        teacher_int8 = next(r for r in gated if r.name == "teacher-int8")
        reason = f"no int8 variant passes the gate (teacher-int8: {teacher_int8.gate_reason})"
    return CompressionReport(
        task=teacher.task,
        metric=metric,
        max_delta=max_delta,
        min_size_ratio=min_size_ratio,
        train_rows=len(train_matrix),
        holdout_rows=len(holdout_matrix),
        variants=tuple(gated),
        chosen=chosen.name if chosen else None,
        reason=reason,
        seconds=time.monotonic() - started,
        chosen_onnx=chosen.onnx if chosen else None,
        chosen_model=chosen.model if chosen else None,
    )


def _measure(
    teacher: BatchModel,
    variants: list[_Variant],
    matrix: np.ndarray,
    targets: list[Any],
    rounds: int,
) -> list[VariantRow]:
    sessions = {v.name: session(v.onnx) for v in variants}
    quality = {
        name: onnx_quality(teacher, sess, matrix, targets) for name, sess in sessions.items()
    }
    b1 = _interleaved_latency(sessions, matrix[:1], calls=500, rounds=rounds)
    batch = np.resize(matrix, (256, matrix.shape[1]))
    b256 = _interleaved_latency(sessions, batch, calls=50, rounds=rounds)
    reference = next(v for v in variants if v.name == "teacher-fp32")
    return [
        VariantRow(
            name=v.name,
            source=v.source,
            precision=v.precision,
            pruning=v.pruning,
            sparsity=v.sparsity,
            fine_tune_epochs=v.fine_tune_epochs,
            hidden=tuple(v.model.params.hidden),
            params=_count(v.model),
            bytes=len(v.onnx),
            size_ratio=len(reference.onnx) / len(v.onnx),
            quality=quality[v.name],
            delta=quality[v.name] - quality[reference.name],
            batch1_us=b1[v.name] * 1e6,
            batch256_per_s=256 / b256[v.name],
            passed=None,
            gate_reason="",
        )
        for v in variants
    ]


def _loss(row: VariantRow, task: str) -> float:
    """How much worse than teacher fp32 (positive is worse)."""
    return row.delta if task == "regression" else -row.delta


def _gate(row: VariantRow, task: str, max_delta: float, min_size_ratio: float) -> VariantRow:
    if row.precision != "int8":
        return dataclasses.replace(row, gate_reason="fp32: a reference, not served")
    metric = "mae" if task == "regression" else "accuracy"
    loss = _loss(row, task)
    if row.size_ratio < min_size_ratio:
        passed, reason = False, f"size ratio {row.size_ratio:.2f} < {min_size_ratio}"
    elif loss > max_delta:
        passed, reason = False, f"{metric} worse by {loss:.4f} > {max_delta}"
    else:
        passed, reason = True, "size and accuracy within the gate"
    return dataclasses.replace(row, passed=passed, gate_reason=reason)
