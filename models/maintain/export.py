"""Exporting a :class:`~eddy.models.maintain.batch.BatchModel` to ONNX, and quantizing it to int8.

The ONNX graph takes raw features (in the model's ``feature_names`` order) and
returns class probabilities (classification) or the value (regression):
standardization and softmax are part of the graph, so serving code needs no
preprocessing of its own. int8 uses ONNX Runtime's dynamic quantization
(PyTorch's eager ``torch.ao.quantization`` is deprecated and was 3 times slower here).
"""

from __future__ import annotations

import io
import tempfile
import time
import warnings
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch import nn

from eddy.models.maintain.batch import BatchModel

INPUT = "features"
OUTPUT = "output"


class _Servable(nn.Module):
    def __init__(self, model: BatchModel) -> None:
        super().__init__()
        self.net = model.net
        self.register_buffer("mean", torch.from_numpy(model.mean))
        self.register_buffer("std", torch.from_numpy(model.std))
        self.classify = model.task != "regression"

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        out = self.net((x - self.mean) / self.std)
        return torch.softmax(out, dim=1) if self.classify else out


def prune(model: BatchModel, amount: float) -> None:
    """Zero the smallest-magnitude ``amount`` fraction of each linear layer's weights, in place."""
    if amount <= 0:
        return
    with torch.no_grad():
        for layer in model.net:
            if isinstance(layer, nn.Linear):
                w = layer.weight
                k = int(w.numel() * amount)
                if k:
                    threshold = w.abs().flatten().kthvalue(k).values
                    w[w.abs() <= threshold] = 0.0


def to_onnx(model: BatchModel) -> bytes:
    """The fp32 ONNX graph of ``model`` (dynamic batch size)."""
    servable = _Servable(model).eval()
    example = torch.zeros(1, len(model.feature_names))
    with tempfile.TemporaryDirectory() as tmp:
        path = Path(tmp) / "model.onnx"
        with warnings.catch_warnings():
            warnings.simplefilter("ignore", DeprecationWarning)
            torch.onnx.export(
                servable,
                (example,),
                str(path),
                input_names=[INPUT],
                output_names=[OUTPUT],
                dynamic_axes={INPUT: {0: "batch"}, OUTPUT: {0: "batch"}},
                opset_version=17,
                dynamo=False,
            )
        return path.read_bytes()


def quantize_int8(onnx_fp32: bytes) -> bytes:
    """Dynamic int8 quantization of weights with ONNX Runtime."""
    from onnxruntime.quantization import QuantType, quantize_dynamic

    with tempfile.TemporaryDirectory() as tmp:
        src, dst = Path(tmp) / "fp32.onnx", Path(tmp) / "int8.onnx"
        src.write_bytes(onnx_fp32)
        quantize_dynamic(str(src), str(dst), weight_type=QuantType.QInt8)
        return dst.read_bytes()


def session(onnx_bytes: bytes) -> Any:
    """An ONNX Runtime session on one thread (serving runs many of them side by side)."""
    import onnxruntime as ort

    options = ort.SessionOptions()
    options.intra_op_num_threads = 1
    options.inter_op_num_threads = 1
    return ort.InferenceSession(onnx_bytes, options, providers=["CPUExecutionProvider"])


def run(sess: Any, matrix: np.ndarray) -> np.ndarray:
    """Outputs of an ONNX session for a float32 feature matrix."""
    return sess.run(None, {INPUT: matrix.astype(np.float32)})[0]


@dataclass(frozen=True)
class QuantizationReport:
    """int8 against fp32 on the same held-out examples."""

    fp32_bytes: int
    int8_bytes: int
    size_ratio: float
    fp32_accuracy: float
    int8_accuracy: float
    accuracy_delta: float
    fp32_batch1_us: float
    int8_batch1_us: float
    fp32_batch256_per_s: float
    int8_batch256_per_s: float
    pruned: float
    metric: str

    def as_dict(self) -> dict[str, Any]:
        """JSON-ready."""
        return asdict(self)


def onnx_quality(model: BatchModel, sess: Any, matrix: np.ndarray, targets: list[Any]) -> float:
    """How well an ONNX export of ``model`` does on ``matrix``: accuracy for classes,
    mean absolute error for regression."""
    out = run(sess, matrix)
    if model.task == "regression":
        return float(np.mean(np.abs(out[:, 0] - np.asarray(targets, float))))
    assert model.classes is not None
    predicted = [model.classes[i] for i in out.argmax(axis=1)]
    return float(np.mean([p == t for p, t in zip(predicted, targets, strict=True)]))


def compare_int8(
    model: BatchModel,
    fp32: bytes,
    int8: bytes,
    matrix: np.ndarray,
    targets: list[Any],
    pruned: float,
) -> QuantizationReport:
    """Accuracy (or MAE), size and batch-1 / batch-256 latency of both artifacts."""
    sessions = {"fp32": session(fp32), "int8": session(int8)}
    quality = {name: onnx_quality(model, sess, matrix, targets) for name, sess in sessions.items()}
    one = matrix[:1]
    batch = np.resize(matrix, (256, matrix.shape[1]))
    b1 = _interleaved_latency(sessions, one, calls=500)
    b256 = _interleaved_latency(sessions, batch, calls=50)
    timing = {name: (b1[name], 256 / b256[name]) for name in sessions}
    return QuantizationReport(
        fp32_bytes=len(fp32),
        int8_bytes=len(int8),
        size_ratio=len(fp32) / len(int8),
        fp32_accuracy=quality["fp32"],
        int8_accuracy=quality["int8"],
        accuracy_delta=quality["int8"] - quality["fp32"],
        fp32_batch1_us=timing["fp32"][0] * 1e6,
        int8_batch1_us=timing["int8"][0] * 1e6,
        fp32_batch256_per_s=timing["fp32"][1],
        int8_batch256_per_s=timing["int8"][1],
        pruned=pruned,
        metric="mae" if model.task == "regression" else "accuracy",
    )


def _interleaved_latency(
    sessions: dict[str, Any], matrix: np.ndarray, calls: int, rounds: int = 9
) -> dict[str, float]:
    """Median seconds per call of each session on ``matrix``.

    Rounds alternate between the sessions and the median round counts, so a burst
    of load on a shared machine slows one round, not one artifact's whole figure.
    """
    matrix = matrix.astype(np.float32)
    seconds: dict[str, list[float]] = {name: [] for name in sessions}
    for sess in sessions.values():
        for _ in range(20):
            sess.run(None, {INPUT: matrix})
    for _ in range(rounds):
        for name, sess in sessions.items():
            started = time.perf_counter()
            for _ in range(calls):
                sess.run(None, {INPUT: matrix})
            seconds[name].append((time.perf_counter() - started) / calls)
    return {name: float(np.median(values)) for name, values in seconds.items()}


# -- the training window the exporter distills and fine-tunes on ------------------------------

TRAIN_WINDOW_ROWS = 4000  # the training part of the default 5,000-example window


def train_window_bytes(
    matrix: np.ndarray, feature_names: list[str], max_rows: int = TRAIN_WINDOW_ROWS
) -> bytes:
    """The training rows as a compressed ``.npz`` (``X`` float32, ``feature_names``).

    At most ``max_rows`` rows are kept, evenly spaced over the window (in order), so
    the artifact stays small whatever the window. No targets: the exporter trains
    on the model's own outputs. Read it back with :func:`read_train_window`.
    """
    if matrix.ndim != 2 or matrix.shape[1] != len(feature_names):
        msg = (
            f"need a 2-D matrix with one column per feature name, got shape {matrix.shape} "
            f"and {len(feature_names)} names"
        )
        raise ValueError(msg)
    if max_rows < 1:
        msg = f"max_rows must be at least 1, got {max_rows}"
        raise ValueError(msg)
    if len(matrix) > max_rows:
        matrix = matrix[np.linspace(0, len(matrix) - 1, max_rows).round().astype(int)]
    buffer = io.BytesIO()
    np.savez_compressed(
        buffer, X=matrix.astype(np.float32), feature_names=np.array(feature_names, dtype=str)
    )
    return buffer.getvalue()


def read_train_window(data: bytes) -> tuple[np.ndarray, list[str]]:
    """``(matrix, feature_names)`` of a :func:`train_window_bytes` artifact (no pickles)."""
    with np.load(io.BytesIO(data), allow_pickle=False) as npz:
        return npz["X"], [str(name) for name in npz["feature_names"]]
