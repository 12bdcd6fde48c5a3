"""The Open Inference Protocol (KServe v2) over REST.

Requests to rows, predictions to responses, every refusal as the protocol's
``{"error": ...}`` with a status and a reason.

Pure: no Kafka, no HTTP server; ``eddy serve`` (:mod:`eddy.consumers.inference.app`) is the
adapter around it, and ``tests/unit/test_inference_protocol.py`` checks it without a broker.

**Inputs: one per feature, by name.** A feature is an input of that name, shape ``[batch]``
or ``[batch, 1]``: numbers as ``FP64``/``FP32``/``FP16``, ``INT*``/``UINT*``, booleans as
``BOOL``, categories (text) as ``BYTES``. A model whose features are all numbers may instead
take one input named ``features``, shape ``[batch, n]``, whose columns follow the order its
metadata lists (``parameters.feature_order``); the two may be mixed (``features`` for the
numbers, one ``BYTES`` input per category). A stream that has a feature literally named
``features`` gets it by the per-feature rule (shape ``[batch]`` or ``[batch, 1]``).

**Outputs**: ``predict`` (the label: ``BOOL`` for a binary stream's ``true``/``false``,
``INT64`` for whole-number classes, ``BYTES`` otherwise; ``FP64`` values for regression),
shape ``[batch]``; for classifiers ``predict_proba``, ``FP64`` ``[batch, classes]`` whose
column order is ``parameters.classes`` (a JSON array in a string: the protocol's parameter
values are scalars). Both in JSON, or in the binary tensor extension that Triton's clients
use by default (``Inference-Header-Content-Length``) when the request asks for it.
"""

from __future__ import annotations

import math
import struct
from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np
import orjson

from eddy.models.exceptions import EddyError
from eddy.models.learners import Prediction

HEADER_LENGTH = "inference-header-content-length"  # the binary tensor extension's header
DENSE_INPUT = "features"
PREDICT, PROBA = "predict", "predict_proba"

# datatype -> numpy dtype of its binary form (little-endian, row-major); BYTES has none.
DTYPES: dict[str, str | None] = {
    "BOOL": "?",
    "UINT8": "<u1",
    "UINT16": "<u2",
    "UINT32": "<u4",
    "UINT64": "<u8",
    "INT8": "<i1",
    "INT16": "<i2",
    "INT32": "<i4",
    "INT64": "<i8",
    "FP16": "<f2",
    "FP32": "<f4",
    "FP64": "<f8",
    "BYTES": None,
}
_FLOATS = ("FP16", "FP32", "FP64")
_INTEGERS = tuple(d for d in DTYPES if d.startswith(("INT", "UINT")))

# Reason codes of refused requests (the `reason` label of eddy_serve_errors_total).
BAD_REQUEST = "bad_request"  # not the protocol's shape: JSON, inputs, shapes, datatypes
FEATURES = "features"  # the rows do not fit the model (strict serving)
VALUE_TOO_LARGE = "value_too_large"  # a number beyond EDDY_MAX_FEATURE_MAGNITUDE
BATCH_TOO_LARGE = "batch_too_large"  # more rows than EDDY_SERVE_MAX_BATCH
TOO_LARGE = "too_large"  # a body over EDDY_SERVE_MAX_BODY_BYTES
UNAUTHORIZED = "unauthorized"
UNKNOWN_MODEL = "unknown_model"
UNKNOWN_VERSION = "unknown_version"
NOT_READY = "not_ready"
NOT_FOUND = "not_found"  # a path the protocol does not have
INTERNAL = "internal"  # the model raised: answered 500 without a traceback, and logged
REASONS = (
    BAD_REQUEST,
    FEATURES,
    VALUE_TOO_LARGE,
    BATCH_TOO_LARGE,
    TOO_LARGE,
    UNAUTHORIZED,
    UNKNOWN_MODEL,
    UNKNOWN_VERSION,
    NOT_READY,
    NOT_FOUND,
    INTERNAL,
)


class ProtocolError(EddyError):
    """A request answered with ``{"error": message}``, an HTTP status and a reason code."""

    def __init__(self, status: int, reason: str, message: str) -> None:
        super().__init__(message)
        self.status = status
        self.reason = reason
        self.message = message

    def body(self) -> bytes:
        """The protocol's error object."""
        return orjson.dumps({"error": self.message})


def bad(message: str, reason: str = BAD_REQUEST) -> ProtocolError:
    """A 400 with ``message``."""
    return ProtocolError(400, reason, message)


@dataclass(frozen=True)
class Feature:
    """One input a model takes: its name and ``number`` or ``category``."""

    name: str
    kind: str

    @property
    def datatype(self) -> str:
        """The datatype its metadata names (numbers may come in any numeric one)."""
        return "BYTES" if self.kind == "category" else "FP64"


def features_of_columns(columns: Iterable[str]) -> list[Feature]:
    """The features behind a model's columns.

    A text feature is one-hot columns ``name=value`` (as
    :func:`eddy.models.maintain.batch.vectorize` makes them), the rest numbers.

    >>> [(f.name, f.kind) for f in features_of_columns(["x", "color=red", "color=blue", "a=b"])]
    [('x', 'number'), ('color', 'category'), ('a', 'category')]
    """
    columns = list(columns)
    known = set(columns)
    out: dict[str, str] = {}
    for column in columns:
        name, eq, _ = column.partition("=")
        if eq and name and name not in known:
            out.setdefault(name, "category")
        else:
            out.setdefault(column, "number")
    return [Feature(name, kind) for name, kind in out.items()]


@dataclass(frozen=True)
class Requested:
    """An output the request names, and whether it wants it in binary."""

    name: str
    binary: bool


@dataclass(frozen=True)
class InferRequest:
    """A parsed inference request: the rows to predict and what to answer."""

    id: str | None
    rows: list[dict[str, Any]]
    outputs: tuple[Requested, ...] | None  # None: every output
    binary_output: bool  # the request-level default (``binary_data_output``)


def parse_request(
    body: bytes,
    header_length: int | None = None,
    *,
    max_batch: int,
    max_magnitude: float = math.inf,
    feature_order: Sequence[str] | None = None,
) -> InferRequest:
    """Rows from an inference request body.

    A malformed body is a :class:`ProtocolError` (400) naming what is wrong.
    ``header_length`` is the binary extension's JSON length; ``feature_order`` the columns
    of a ``features`` input (None: the model has none).

    >>> body = b'{"inputs": [{"name": "x", "shape": [2], "datatype": "FP64", "data": [1, 2.5]},'
    >>> body += b' {"name": "c", "shape": [2, 1], "datatype": "BYTES", "data": ["a", "b"]}]}'
    >>> parse_request(body, max_batch=8).rows
    [{'x': 1.0, 'c': 'a'}, {'x': 2.5, 'c': 'b'}]
    """
    if header_length is not None:
        if not 0 <= header_length <= len(body):
            msg = (
                f"Inference-Header-Content-Length {header_length} is not within the body "
                f"({len(body)} bytes)"
            )
            raise bad(msg)
        document, binary = body[:header_length], memoryview(body)[header_length:]
    else:
        document, binary = body, memoryview(b"")
    try:
        request = orjson.loads(document)
    except orjson.JSONDecodeError as ex:
        msg = f"the request body is not JSON: {ex}"
        raise bad(msg) from ex
    if not isinstance(request, dict):
        msg = "the request body must be a JSON object with 'inputs'"
        raise bad(msg)
    request_id = request.get("id")
    if request_id is not None and not isinstance(request_id, str):
        msg = "'id' must be a string"
        raise bad(msg)
    parameters = _parameters(request.get("parameters"), "the request")
    inputs = request.get("inputs")
    if not isinstance(inputs, list) or not inputs:
        msg = "'inputs' must be a non-empty array of tensors"
        raise bad(msg)
    columns: dict[str, list[Any]] = {}
    batch: int | None = None
    offset = 0
    for i, tensor in enumerate(inputs):
        name, shape, datatype, values, offset = _tensor(tensor, i, binary, offset)
        rows = shape[0] if shape else 0
        if batch is None:
            batch = rows
            if batch > max_batch:
                msg = f"{batch} rows in one request; at most {max_batch} (EDDY_SERVE_MAX_BATCH)"
                raise bad(msg, BATCH_TOO_LARGE)
        elif rows != batch:
            msg = f"input {name!r} has {rows} rows, input {next(iter(columns))!r} has {batch}"
            raise bad(msg)
        if name == DENSE_INPUT and DENSE_INPUT not in (feature_order or ()):
            _add_dense(columns, shape, datatype, values, feature_order)
            continue
        if len(shape) not in (1, 2) or (len(shape) == 2 and shape[1] != 1):
            msg = f"input {name!r} has shape {shape}: a feature is shape [batch] or [batch, 1]" + (
                f"; a matrix goes in input {DENSE_INPUT!r}" if feature_order else ""
            )
            raise bad(msg)
        _add(columns, name, values)
    if offset != len(binary):
        msg = f"{len(binary) - offset} bytes of binary data follow the inputs that no input claims"
        raise bad(msg)
    if not batch:
        msg = "a request needs at least one row (shape [0] has none)"
        raise bad(msg)
    _check_magnitude(columns, max_magnitude)
    names = list(columns)
    rows = [dict(zip(names, values, strict=True)) for values in zip(*columns.values(), strict=True)]
    return InferRequest(
        request_id,
        rows,
        _requested(request.get("outputs"), bool(parameters.get("binary_data_output", False))),
        bool(parameters.get("binary_data_output", False)),
    )


def _add_dense(
    columns: dict[str, list[Any]],
    shape: list[int],
    datatype: str,
    values: list[Any],
    order: Sequence[str] | None,
) -> None:
    if not order:
        msg = (
            "this model lists no feature order for an input 'features' [batch, n]: send "
            "one input per feature, named by it, shape [batch]"
        )
        raise bad(msg)
    if datatype == "BYTES":
        msg = "input 'features' takes numbers; send each category as its own BYTES input"
        raise bad(msg)
    if len(shape) != 2 or shape[1] != len(order):
        msg = (
            f"input 'features' has shape {shape}; the model takes [batch, {len(order)}], "
            f"columns {', '.join(order[:20])}{', …' if len(order) > 20 else ''}"
        )
        raise bad(msg)
    width = len(order)
    for j, feature in enumerate(order):
        _add(columns, feature, values[j::width])


def _add(columns: dict[str, list[Any]], name: str, values: list[Any]) -> None:
    if name in columns:
        msg = f"feature {name!r} is given twice (as its own input and a column of 'features'?)"
        raise bad(msg)
    columns[name] = values


def _parameters(value: Any, what: str) -> dict[str, Any]:
    if value is None:
        return {}
    if not isinstance(value, dict):
        msg = f"'parameters' of {what} must be an object"
        raise bad(msg)
    return value


def _tensor(
    tensor: Any, i: int, binary: memoryview, offset: int
) -> tuple[str, list[int], str, list[Any], int]:
    if not isinstance(tensor, dict):
        msg = f"input {i} must be an object with name, shape, datatype and data"
        raise bad(msg)
    name = tensor.get("name")
    if not isinstance(name, str) or not name:
        msg = f"input {i} needs a 'name' (the feature it carries)"
        raise bad(msg)
    shape = tensor.get("shape")
    if (
        not isinstance(shape, list)
        or not shape
        or not all(isinstance(d, int) and not isinstance(d, bool) and d >= 0 for d in shape)
    ):
        msg = f"input {name!r} needs a 'shape': an array of whole numbers ≥ 0, e.g. [batch]"
        raise bad(msg)
    datatype = tensor.get("datatype")
    if datatype not in DTYPES:
        msg = f"input {name!r} has datatype {datatype!r}; one of {', '.join(DTYPES)}"
        raise bad(msg)
    count = math.prod(shape)
    size = _parameters(tensor.get("parameters"), f"input {name!r}").get("binary_data_size")
    if size is not None:
        if not isinstance(size, int) or isinstance(size, bool) or size < 0:
            msg = f"input {name!r}: binary_data_size must be a whole number"
            raise bad(msg)
        if offset + size > len(binary):
            left = len(binary) - offset
            msg = f"input {name!r} claims {size} bytes of binary data; {left} follow"
            raise bad(msg)
        values = _from_binary(name, datatype, bytes(binary[offset : offset + size]), count)
        return name, shape, datatype, values, offset + size
    if "data" not in tensor:
        msg = f"input {name!r} has no 'data' (nor binary_data_size)"
        raise bad(msg)
    values = _from_json(name, datatype, tensor["data"])
    if len(values) != count:
        msg = f"input {name!r} has {len(values)} values; shape {shape} holds {count}"
        raise bad(msg)
    return name, shape, datatype, values, offset


def _flatten(data: Any) -> list[Any]:
    if not isinstance(data, list):
        return [data]
    if not any(isinstance(v, list) for v in data):
        return data
    out: list[Any] = []
    stack = [iter(data)]
    while stack:
        for value in stack[-1]:
            if isinstance(value, list):
                stack.append(iter(value))
                break
            out.append(value)
        else:
            stack.pop()
    return out


def _from_json(name: str, datatype: str, data: Any) -> list[Any]:
    values = _flatten(data)
    if datatype == "BYTES":
        if not all(isinstance(v, str) for v in values):
            msg = f"input {name!r} is BYTES: its data must be strings"
            raise bad(msg)
        return values
    if datatype == "BOOL":
        if not all(isinstance(v, bool) for v in values):
            msg = f"input {name!r} is BOOL: its data must be true or false"
            raise bad(msg)
        return values
    if datatype in _INTEGERS:
        if not all(isinstance(v, int) and not isinstance(v, bool) for v in values):
            msg = f"input {name!r} is {datatype}: its data must be whole numbers"
            raise bad(msg)
        return values
    if not all(isinstance(v, int | float) and not isinstance(v, bool) for v in values):
        msg = f"input {name!r} is {datatype}: its data must be numbers"
        raise bad(msg)
    return [float(v) for v in values]


def _from_binary(name: str, datatype: str, raw: bytes, count: int) -> list[Any]:
    dtype = DTYPES[datatype]
    if dtype is None:
        return _bytes_elements(name, raw, count)
    width = np.dtype(dtype).itemsize
    if len(raw) != count * width:
        msg = f"input {name!r}: {len(raw)} bytes of {datatype} are not its {count} values"
        raise bad(msg)
    array = np.frombuffer(raw, dtype=dtype)
    if datatype in _FLOATS:
        if not np.isfinite(array).all():
            msg = f"input {name!r} holds a non-finite number (NaN or infinity)"
            raise bad(msg)
        return array.astype(np.float64).tolist()
    return array.tolist()


def _bytes_elements(name: str, raw: bytes, count: int) -> list[str]:
    out, at = [], 0
    while at < len(raw):
        if at + 4 > len(raw):
            break
        (n,) = struct.unpack_from("<I", raw, at)
        at += 4
        if at + n > len(raw):
            break
        try:
            out.append(raw[at : at + n].decode())
        except UnicodeDecodeError as ex:
            msg = f"input {name!r}: element {len(out)} is not UTF-8 text"
            raise bad(msg) from ex
        at += n
    if at != len(raw) or len(out) != count:
        msg = (
            f"input {name!r}: its BYTES binary data is not {count} length-prefixed elements "
            "(4-byte little-endian length, then the bytes)"
        )
        raise bad(msg)
    return out


def _check_magnitude(columns: dict[str, list[Any]], limit: float) -> None:
    for name, values in columns.items():
        for i, v in enumerate(values):
            if not isinstance(v, str | bool) and abs(v) > limit:
                msg = (
                    f"feature {name!r} of row {i} is {v!r}, beyond EDDY_MAX_FEATURE_MAGNITUDE "
                    f"({limit:g})"
                )
                raise bad(msg, VALUE_TOO_LARGE)


def _requested(outputs: Any, binary_default: bool) -> tuple[Requested, ...] | None:
    if outputs is None:
        return None
    if not isinstance(outputs, list) or not all(
        isinstance(o, dict) and isinstance(o.get("name"), str) for o in outputs
    ):
        msg = "'outputs' must be an array of objects with a 'name'"
        raise bad(msg)
    out = []
    for o in outputs:
        params = _parameters(o.get("parameters"), f"output {o['name']!r}")
        out.append(Requested(o["name"], bool(params.get("binary_data", binary_default))))
    return tuple(out)


# -- responses ---------------------------------------------------------------------------------


def label_datatype(labels: Iterable[Any], regression: bool) -> str:
    """The datatype of ``predict``: FP64 values, BOOL, INT64 or (any other label) BYTES.

    >>> [label_datatype(labels, False) for labels in ([True, False], [1, 2], ["a", 1])]
    ['BOOL', 'INT64', 'BYTES']
    """
    if regression:
        return "FP64"
    labels = list(labels)
    if labels and all(isinstance(y, bool) for y in labels):
        return "BOOL"
    if labels and all(isinstance(y, int) and not isinstance(y, bool) for y in labels):
        return "INT64"
    return "BYTES"


def class_order(classes: Sequence[Any] | None, predictions: Sequence[Prediction]) -> list[Any]:
    """The columns of ``predict_proba``.

    The model's own classes when it has a fixed list (the champion), else every class the
    predictions give a probability, sorted (False before True) so that the order is the
    same from one request to the next.
    """
    if classes is not None:
        return list(classes)
    seen: set[Any] = set()
    for p in predictions:
        seen.update(p.proba or ())
    return sorted(seen, key=_class_key)


def _class_key(c: Any) -> tuple[str, Any]:
    return (type(c).__name__, c if isinstance(c, bool | int | float | str) else repr(c))


def classes_parameter(classes: Sequence[Any]) -> str:
    """``parameters.classes`` of ``predict_proba``: the classes as a JSON array in a string.

    >>> classes_parameter([False, True])
    '[false,true]'
    """
    plain = [c if isinstance(c, bool | int | float | str) else str(c) for c in classes]
    return orjson.dumps(plain).decode()


def build_response(
    model: str,
    version: str,
    request: InferRequest,
    predictions: Sequence[Prediction],
    *,
    regression: bool,
    classes: Sequence[Any] | None = None,
) -> tuple[bytes, int | None]:
    """The response body and, when any output is binary, the JSON header's length."""
    labels = [p.value for p in predictions]
    n = len(labels)
    order = [] if regression else class_order(classes, predictions)
    available = [PREDICT] if regression else [PREDICT, PROBA]
    if request.outputs is None:
        wanted = [Requested(name, request.binary_output) for name in available]
    else:
        wanted = list(request.outputs)
        unknown = [o.name for o in wanted if o.name not in available]
        if unknown:
            msg = (
                f"model {model!r} has no output {', '.join(map(repr, unknown))}; it gives "
                f"{', '.join(available)}"
            )
            raise bad(msg)
    outputs: list[dict[str, Any]] = []
    blobs: list[bytes] = []
    for o in wanted:
        if o.name == PREDICT:
            datatype = label_datatype(order or labels, regression)
            if datatype == "BYTES":
                values: list[Any] = [str(y) for y in labels]
            elif datatype == "FP64":
                values = [float(y) for y in labels]
            else:
                values = labels
            tensor: dict[str, Any] = {"name": PREDICT, "datatype": datatype, "shape": [n]}
        else:
            values = [float((p.proba or {}).get(c, 0.0)) for p in predictions for c in order]
            datatype = "FP64"
            tensor = {
                "name": PROBA,
                "datatype": datatype,
                "shape": [n, len(order)],
                "parameters": {"classes": classes_parameter(order)},
            }
        if o.binary:
            blob = to_binary(datatype, values)
            tensor.setdefault("parameters", {})["binary_data_size"] = len(blob)
            blobs.append(blob)
        else:
            tensor["data"] = values
        outputs.append(tensor)
    response: dict[str, Any] = {"model_name": model, "model_version": version, "outputs": outputs}
    if request.id is not None:
        response["id"] = request.id
    header = orjson.dumps(response)
    if not blobs:
        return header, None
    return header + b"".join(blobs), len(header)


def to_binary(datatype: str, values: Sequence[Any]) -> bytes:
    r"""Values in the binary tensor extension's form.

    >>> to_binary("BYTES", ["ab"]), to_binary("BOOL", [True, False])
    (b'\x02\x00\x00\x00ab', b'\x01\x00')
    """
    dtype = DTYPES[datatype]
    if dtype is None:
        parts = []
        for v in values:
            raw = v.encode() if isinstance(v, str) else bytes(v)
            parts.append(struct.pack("<I", len(raw)) + raw)
        return b"".join(parts)
    return np.asarray(values, dtype=dtype).tobytes()
