"""The wire format: decode and validate every event at the edge, encode what eddy sends.

``schemas/*.json`` (JSON Schema 2020-12) is the single source of truth. Control
events, which are rare, are checked against it directly. Samples and labels are
on the hot path, where a generic validator costs more than the whole rest of the
pipeline, so they go through hand-written checks that mirror their schemas; the
test suite proves the two agree on generated inputs (``tests/unit/test_codec.py``).

Every failure raises a :class:`~eddy.streams.exceptions.DecodeError` whose message says
what was wrong and where; nothing else escapes a decoder.
"""

from __future__ import annotations

import hashlib
import hmac
import json
import re
import time
import uuid
from dataclasses import dataclass
from datetime import UTC, datetime
from functools import cache, lru_cache
from importlib import resources
from typing import Any

import jsonschema
import orjson
from jsonschema import Draft202012Validator
from referencing import Registry, Resource

from eddy.streams.exceptions import (
    BadSignature,
    DecodeError,
    InvalidJSON,
    MessageTooLarge,
    SchemaViolation,
    UnsignedEvent,
)

SCHEMA_PACKAGE = "eddy.schemas"
CONTROL_EVENT_TYPES = (
    "drift.detected",
    "feature_drift.detected",
    "retrain.requested",
    "model.updated",
    "model.exported",
    "model.promoted",
    "model.rolled_back",
    "maintenance.refused",
)
EVENT_TYPE_PREFIX = "eddy."

MAX_ID_LENGTH = 256
MAX_STRING_LABEL_LENGTH = 256
MAX_FEATURES = 10_000
MAX_FEATURE_NAME_LENGTH = 256
MAX_CATEGORY_LENGTH = 256
MAX_TIMESTAMP_MS = 253_402_300_799_999  # 9999-12-31T23:59:59.999Z
_NAME = re.compile(r"[A-Za-z0-9][A-Za-z0-9._-]{0,127}")

FeatureValue = float | int | bool | str
Features = dict[str, FeatureValue] | list[float | int | bool]
LabelValue = bool | int | float | str


# -- schemas -------------------------------------------------------------------------------


@cache
def schema_documents() -> dict[str, dict[str, Any]]:
    """Every schema in ``schemas/``, by file stem (``sample``, ``drift.detected``…)."""
    docs = {}
    for entry in resources.files(SCHEMA_PACKAGE).iterdir():
        if entry.name.endswith(".json"):
            docs[entry.name.removesuffix(".json")] = json.loads(entry.read_text())
    return docs


def _ecma_pattern(validator: Any, pattern: str, instance: Any, schema: Any) -> Any:
    # JSON Schema patterns are ECMA-262: "$" matches only at the very end. Python's
    # "$" also matches before a final newline, which would let "name\n" through.
    if isinstance(instance, str) and not _ecma_regex(pattern).search(instance):
        yield jsonschema.ValidationError(f"{instance!r} does not match {pattern!r}")


@cache
def _ecma_regex(pattern: str) -> re.Pattern[str]:
    if pattern.endswith("$") and not pattern.endswith("\\$"):
        pattern = pattern[:-1] + r"\Z"
    return re.compile(pattern)


_Validator = jsonschema.validators.extend(Draft202012Validator, {"pattern": _ecma_pattern})


@cache
def validator(name: str) -> Any:
    """A JSON Schema validator for schema ``name``, with every ``$ref`` resolvable."""
    docs = schema_documents()
    if name not in docs:
        msg = f"no schema named {name!r}; known: {', '.join(sorted(docs))}"
        raise KeyError(msg)
    registry: Registry = Registry().with_resources(
        (doc["$id"], Resource.from_contents(doc)) for doc in docs.values()
    )
    return _Validator(
        docs[name], registry=registry, format_checker=Draft202012Validator.FORMAT_CHECKER
    )


def schema_errors(name: str, value: Any) -> list[str]:
    """Readable schema violations of ``value`` against schema ``name`` (empty: valid)."""
    errors = sorted(validator(name).iter_errors(value), key=lambda e: list(e.absolute_path))
    return [f"{_path(e.absolute_path)}: {e.message}" for e in errors]


def _path(parts: Any) -> str:
    return "$" + "".join(f"[{p}]" if isinstance(p, int) else f".{p}" for p in parts)


# -- events --------------------------------------------------------------------------------


@dataclass(slots=True)
class Sample:
    """A decoded sample. ``label`` is ``None`` unless it came inline."""

    id: str
    features: Features
    ts: int | None = None
    label: LabelValue | None = None
    stream: str = "default"


@dataclass(slots=True)
class Label:
    """A decoded label for the sample with the same ``id``."""

    id: str
    label: LabelValue
    ts: int | None = None


@dataclass(slots=True)
class Example:
    """A labelled example (schema ``example``): what the learner learns from."""

    id: str
    stream: str
    features: Features
    label: LabelValue
    sample: tuple[int, int]  # (partition, offset) of the sample record
    label_at: tuple[int, int] | None = None  # of the label record; None when inline
    ts: int | None = None
    served: Served | None = None  # the prediction made when the sample arrived


@dataclass(slots=True, frozen=True)
class Served:
    """The prediction served for a sample when it arrived, and the model that made it."""

    prediction: LabelValue | None
    proba: dict[Any, float] | None
    model_version: str
    model_examples: int

    def as_json(self) -> dict[str, Any]:
        """The wire form (schema ``defs#/$defs/served``)."""
        out: dict[str, Any] = {
            "prediction": self.prediction,
            "model_version": self.model_version,
            "model_examples": self.model_examples,
        }
        if self.proba:
            out["proba"] = self.proba
        return out


@dataclass(slots=True)
class ControlEvent:
    """A CloudEvents 1.0 control event; ``type`` is the short name (``drift.detected``)."""

    type: str
    id: str
    source: str
    time: str
    data: dict[str, Any]
    subject: str | None = None
    extensions: dict[str, Any] | None = None

    @property
    def dedup_key(self) -> tuple[str, str]:
        """CloudEvents identity: ``source`` + ``id``."""
        return (self.source, self.id)


# -- decoding ------------------------------------------------------------------------------


def load_json(raw: bytes, max_bytes: int) -> Any:
    """Parse one JSON document, refusing oversized or malformed input."""
    if not isinstance(raw, bytes | bytearray | memoryview):
        msg = f"expected bytes, got {type(raw).__name__}"
        raise InvalidJSON(msg)
    if len(raw) > max_bytes:
        msg = f"message is {len(raw)} bytes, over the {max_bytes}-byte cap"
        raise MessageTooLarge(msg)
    try:
        return orjson.loads(raw)
    except orjson.JSONDecodeError as ex:
        msg = f"not valid JSON: {ex}"
        raise InvalidJSON(msg) from ex


def decode_sample(raw: bytes, max_bytes: int = 1_048_576) -> Sample:
    """Decode and validate a sample (schema ``sample``)."""
    obj = load_json(raw, max_bytes)
    _require_object(obj, ("id", "features"), ("id", "features", "ts", "label", "stream"))
    stream = obj.get("stream", "default")
    if not (isinstance(stream, str) and _valid_name(stream)):
        _fail(
            "$.stream",
            f"must be 1-128 letters, digits, '.', '_' or '-' (not starting with '.' or '-'), "
            f"got {stream!r}",
        )
    label = obj.get("label")
    return Sample(
        id=_event_id(obj["id"]),
        features=_features(obj["features"]),
        ts=_timestamp(obj["ts"]) if "ts" in obj else None,
        label=_label_value(label, "$.label") if "label" in obj else None,
        stream=stream,
    )


def decode_label(raw: bytes, max_bytes: int = 1_048_576) -> Label:
    """Decode and validate a label (schema ``label``)."""
    obj = load_json(raw, max_bytes)
    _require_object(obj, ("id", "label"), ("id", "label", "ts"))
    return Label(
        id=_event_id(obj["id"]),
        label=_label_value(obj["label"], "$.label"),
        ts=_timestamp(obj["ts"]) if "ts" in obj else None,
    )


def decode_example(raw: bytes, max_bytes: int = 1_048_576) -> Example:
    """Decode and validate an example (schema ``example``)."""
    obj = load_json(raw, max_bytes)
    _require_object(
        obj,
        ("id", "stream", "features", "label", "sample"),
        ("id", "stream", "features", "label", "sample", "label_at", "ts", "served"),
    )
    stream = obj["stream"]
    if not (isinstance(stream, str) and _valid_name(stream)):
        _fail("$.stream", f"must be a stream name, got {_brief(stream)}")
    label_at = obj.get("label_at")
    return Example(
        id=_event_id(obj["id"]),
        stream=stream,
        features=_features(obj["features"]),
        label=_label_value(obj["label"], "$.label"),
        sample=_position(obj["sample"], "$.sample"),
        label_at=None if label_at is None else _position(label_at, "$.label_at"),
        ts=_timestamp(obj["ts"]) if "ts" in obj else None,
        served=_served(obj["served"]) if "served" in obj else None,
    )


def _served(value: Any) -> Served:
    _require_object(
        value,
        ("prediction", "model_version", "model_examples"),
        ("prediction", "model_version", "model_examples", "proba"),
        "$.served",
    )
    prediction = value["prediction"]
    if prediction is not None:
        _label_value(prediction, "$.served.prediction")
    version = value["model_version"]
    if not (isinstance(version, str) and len(version) <= 64 and _valid_name(version)):
        _fail("$.served.model_version", f"must be a version name, got {_brief(version)}")
    n = value["model_examples"]
    if not (type(n) is int and n >= 0):
        _fail("$.served.model_examples", f"must be a whole number >= 0, got {_brief(n)}")
    proba = value.get("proba")
    if proba is not None and not (
        isinstance(proba, dict)
        and len(proba) <= 1024
        and all(type(v) in (int, float) and 0 <= v <= 1 for v in proba.values())
    ):
        _fail("$.served.proba", "must map classes to probabilities in [0, 1]")
    return Served(prediction, proba, version, n)


def _position(value: Any, where: str) -> tuple[int, int]:
    if (
        isinstance(value, list)
        and len(value) == 2
        and all(isinstance(v, int) and not isinstance(v, bool) and v >= 0 for v in value)
    ):
        return (value[0], value[1])
    return _fail(where, f"must be [partition, offset], got {_brief(value)}")


def encode_example(example: Example) -> bytes:
    """The wire form of an example."""
    out: dict[str, Any] = {
        "id": example.id,
        "stream": example.stream,
        "features": example.features,
        "label": example.label,
        "sample": example.sample,
        "label_at": example.label_at,
    }
    if example.ts is not None:
        out["ts"] = example.ts
    if example.served is not None:
        out["served"] = example.served.as_json()
    return orjson.dumps(out, option=orjson.OPT_NON_STR_KEYS)


# CloudEvents extension attributes: the event's HMAC-SHA256 (hex), and its sequence
# number, which grows with every event of one source about one subject, so that a
# replayed old event can be told from a new one (see :class:`Sequences`).
SIGNATURE_ATTRIBUTE = "eddysig"
SEQUENCE_ATTRIBUTE = "eddyseq"


def event_signature(event: dict[str, Any], key: bytes) -> str:
    """HMAC-SHA256 of ``event`` (without its signature) in canonical JSON (sorted keys).

    >>> e = {"id": "1", "data": {"b": 1, "a": 2.5}}
    >>> event_signature(e, b"k") == event_signature({"data": {"a": 2.5, "b": 1}, "id": "1"}, b"k")
    True
    """
    body = {k: v for k, v in event.items() if k != SIGNATURE_ATTRIBUTE}
    canonical = orjson.dumps(body, option=orjson.OPT_SORT_KEYS)
    return hmac.new(key, canonical, hashlib.sha256).hexdigest()


class Sequences:
    """The highest sequence number seen per (source, subject): refuses replays.

    >>> s = Sequences()
    >>> s.fresh("src", "m", 5), s.fresh("src", "m", 7), s.fresh("src", "m", 6)
    (True, True, False)
    """

    def __init__(self, keep: int = 10_000) -> None:
        self._last: dict[tuple[str, str], int] = {}
        self._keep = keep

    def fresh(self, source: str, subject: str | None, seq: int) -> bool:
        """Record ``seq``; whether it is newer than every one seen before."""
        key = (source, subject or "")
        last = self._last.get(key)
        if last is not None and seq <= last:
            return False
        if len(self._last) >= self._keep and key not in self._last:
            self._last.pop(next(iter(self._last)))  # bounded: forget the oldest emitter
        self._last[key] = seq
        return True


def next_sequence(last: int = 0) -> int:
    """A sequence number above ``last`` that also grows across restarts (the clock)."""
    return max(time.time_ns(), last + 1)


def decode_event(
    raw: bytes, max_bytes: int = 1_048_576, signing_key: bytes | None = None
) -> ControlEvent:
    """Decode a control event and validate it against its type's schema.

    With ``signing_key``, the event must carry a matching HMAC signature: else
    :class:`UnsignedEvent` or :class:`BadSignature` (checked before anything else
    is trusted).
    """
    obj = load_json(raw, max_bytes)
    if not isinstance(obj, dict):
        _fail("$", f"must be a JSON object, got {_json_type(obj)}")
    if signing_key is not None:
        _check_signature(obj, signing_key)
    full_type = obj.get("type")
    short = (
        full_type.removeprefix(EVENT_TYPE_PREFIX)
        if isinstance(full_type, str) and full_type.startswith(EVENT_TYPE_PREFIX)
        else None
    )
    if short not in CONTROL_EVENT_TYPES:
        known = ", ".join(EVENT_TYPE_PREFIX + t for t in CONTROL_EVENT_TYPES)
        _fail("$.type", f"unknown control event type {full_type!r}; known: {known}")
    errors = schema_errors(short, obj)
    if errors:
        raise SchemaViolation("; ".join(errors[:5]))
    core = {"specversion", "id", "source", "type", "time", "data", "subject", "datacontenttype"}
    extensions = {k: v for k, v in obj.items() if k not in core}
    return ControlEvent(
        type=short,
        id=obj["id"],
        source=obj["source"],
        time=obj["time"],
        data=obj["data"],
        subject=obj.get("subject"),
        extensions=extensions or None,
    )


def _check_signature(obj: dict[str, Any], key: bytes) -> None:
    given = obj.get(SIGNATURE_ATTRIBUTE)
    if not isinstance(given, str):
        msg = (
            f"control event {obj.get('id')!r} is unsigned, and signing is on "
            "(EDDY_EVENT_SIGNING_KEY): refused"
        )
        raise UnsignedEvent(msg)
    if not hmac.compare_digest(given, event_signature(obj, key)):
        msg = (
            f"control event {obj.get('id')!r} has a signature that does not match its "
            "content (forged, altered, or signed with another key): refused"
        )
        raise BadSignature(msg)


def _fail(where: str, what: str) -> Any:
    msg = f"{where}: {what}"
    raise SchemaViolation(msg)


def _json_type(value: Any) -> str:
    if value is None:
        return "null"
    if isinstance(value, bool):
        return "boolean"
    if isinstance(value, int | float):
        return "number"
    if isinstance(value, str):
        return "string"
    if isinstance(value, list):
        return "array"
    return "object"


def _require_object(
    obj: Any, required: tuple[str, ...], allowed: tuple[str, ...], where: str = "$"
) -> None:
    if not isinstance(obj, dict):
        _fail(where, f"must be a JSON object, got {_json_type(obj)}")
    keys = obj.keys()
    if keys >= _as_set(required) and keys <= _as_set(allowed):  # the usual case, in C
        return
    missing = [k for k in required if k not in obj]
    if missing:
        _fail(where, f"missing required field(s) {', '.join(missing)}")
    extra = [k for k in obj if k not in allowed]
    _fail(
        where,
        f"unknown field(s) {', '.join(map(repr, extra[:5]))}; allowed: {', '.join(allowed)}",
    )


@cache
def _as_set(names: tuple[str, ...]) -> frozenset[str]:
    return frozenset(names)


def valid_stream_name(name: str) -> bool:
    """Whether ``name`` is a valid stream (and model) name."""
    return isinstance(name, str) and _valid_name(name)


def _valid_name(name: str) -> bool:
    # Longer names cannot match; checked first so that they never enter the cache.
    return len(name) <= 128 and _matches_name(name)


@lru_cache(maxsize=1024)
def _matches_name(name: str) -> bool:
    # Streams are few and repeat on every event: the regex runs once per name. Bounded
    # in count (the names come from the input) and, above, in length.
    return _NAME.fullmatch(name) is not None


def _event_id(value: Any) -> str:
    if not isinstance(value, str) or not 1 <= len(value) <= MAX_ID_LENGTH:
        _fail("$.id", f"must be a string of 1-{MAX_ID_LENGTH} characters, got {_brief(value)}")
    return value  # type: ignore[no-any-return]


def _is_number(value: Any) -> bool:
    # orjson yields only finite floats and 64-bit ints; bool is an int in Python, not in JSON.
    return isinstance(value, int | float) and not isinstance(value, bool)


_NUMBER_TYPES = frozenset((int, float))  # exactly: bool is an int in Python, not in JSON


def _features(value: Any) -> Features:
    if isinstance(value, dict):
        if not 1 <= len(value) <= MAX_FEATURES:
            _fail("$.features", f"must have 1-{MAX_FEATURES} entries, got {len(value)}")
        # One C-level pass over types and name lengths; the loop below only runs for
        # text values or to say what is wrong.
        if _NUMBER_TYPES.issuperset(map(type, value.values())) and (
            min(map(len, value)) >= 1 and max(map(len, value)) <= MAX_FEATURE_NAME_LENGTH
        ):
            return value
        for name, x in value.items():
            if not 1 <= len(name) <= MAX_FEATURE_NAME_LENGTH:
                _fail("$.features", f"feature names must be 1-{MAX_FEATURE_NAME_LENGTH} characters")
            _feature_value(x, name)
        return value
    if isinstance(value, list):
        if not 1 <= len(value) <= MAX_FEATURES:
            _fail("$.features", f"must have 1-{MAX_FEATURES} entries, got {len(value)}")
        if _NUMBER_TYPES.issuperset(map(type, value)):
            return value
        for i, x in enumerate(value):
            if not (_is_number(x) or isinstance(x, bool)):
                _fail(f"$.features[{i}]", f"must be a number or a boolean, got {_brief(x)}")
        return value
    return _fail(
        "$.features",
        f"must be a name->value object or an array of numbers, got {_json_type(value)}",
    )


def _feature_value(x: Any, name: str) -> None:
    if _is_number(x) or isinstance(x, bool):
        return
    if isinstance(x, str) and 1 <= len(x) <= MAX_CATEGORY_LENGTH:
        return
    _fail(
        f"$.features.{name}",
        f"must be a number, a boolean or a category of 1-{MAX_CATEGORY_LENGTH} characters, "
        f"got {_brief(x)}",
    )


def feature_magnitude_problem(features: Features, bound: float) -> str | None:
    """Why ``features`` cannot be learned safely: a number beyond ``bound`` overflows
    squares and sums in learning (``None`` when all are within it).

    >>> feature_magnitude_problem({"a": 1.0, "b": "red"}, 1e12) is None
    True
    >>> feature_magnitude_problem({"a": 1e308}, 1e12)
    '$.features.a is 1e+308, beyond the accepted magnitude 1e+12 (EDDY_MAX_FEATURE_MAGNITUDE)'
    """
    items = features.items() if isinstance(features, dict) else enumerate(features)
    for name, x in items:
        if type(x) in _NUMBER_TYPES and not -bound <= x <= bound:
            where = f"$.features.{name}" if isinstance(features, dict) else f"$.features[{name}]"
            return (
                f"{where} is {x:g}, beyond the accepted magnitude {bound:g} "
                "(EDDY_MAX_FEATURE_MAGNITUDE)"
            )
    return None


def _label_value(value: Any, where: str) -> LabelValue:
    if isinstance(value, bool) or _is_number(value):
        return value  # type: ignore[no-any-return]
    if isinstance(value, str) and 1 <= len(value) <= MAX_STRING_LABEL_LENGTH:
        return value
    return _fail(
        where,
        f"must be a boolean, a number or a string of 1-{MAX_STRING_LABEL_LENGTH} characters, "
        f"got {_brief(value)}",
    )


def _timestamp(value: Any) -> int:
    # JSON Schema's "integer" includes 1.0; accept it as jsonschema does.
    if isinstance(value, float) and value.is_integer():
        value = int(value)
    if not (isinstance(value, int) and not isinstance(value, bool)) or not (
        0 <= value <= MAX_TIMESTAMP_MS
    ):
        _fail(
            "$.ts",
            f"must be milliseconds since the epoch (a whole number >= 0), got {_brief(value)}",
        )
    return value  # type: ignore[no-any-return]


def _brief(value: Any) -> str:
    text = repr(value)
    return f"{_json_type(value)} {text[:40]}{'…' if len(text) > 40 else ''}"


# -- encoding ------------------------------------------------------------------------------


def encode(value: Any) -> bytes:
    """Encode a dict (or dataclass) as compact JSON."""
    return orjson.dumps(value)


def encode_sample(sample: Sample) -> bytes:
    """The wire form of a sample; optional fields only when set."""
    out: dict[str, Any] = {"id": sample.id, "features": sample.features}
    if sample.ts is not None:
        out["ts"] = sample.ts
    if sample.label is not None:
        out["label"] = sample.label
    if sample.stream != "default":
        out["stream"] = sample.stream
    return orjson.dumps(out)


def encode_label(label: Label) -> bytes:
    """The wire form of a label."""
    out: dict[str, Any] = {"id": label.id, "label": label.label}
    if label.ts is not None:
        out["ts"] = label.ts
    return orjson.dumps(out)


def now_ms() -> int:
    """The current time in milliseconds since the epoch."""
    return time.time_ns() // 1_000_000


def make_event(
    event_type: str,
    source: str,
    data: dict[str, Any],
    subject: str | None = None,
    event_id: str | None = None,
    signing_key: bytes | None = None,
    sequence: int | None = None,
) -> dict[str, Any]:
    """Build a CloudEvents 1.0 control event and validate it against its schema.

    Every event carries a sequence number in ``eddyseq`` (``sequence``, or the
    clock); with ``signing_key`` also its HMAC-SHA256 in ``eddysig`` (see
    :func:`event_signature`), which covers the sequence number.

    ``event_type`` is a short name from :data:`CONTROL_EVENT_TYPES`. Raises
    :class:`SchemaViolation` when ``data`` does not fit, so that eddy never
    publishes an event its own consumers would dead-letter.
    """
    if event_type not in CONTROL_EVENT_TYPES:
        msg = f"unknown control event type {event_type!r}; known: {', '.join(CONTROL_EVENT_TYPES)}"
        raise ValueError(msg)
    event: dict[str, Any] = {
        "specversion": "1.0",
        "id": event_id or str(uuid.uuid4()),
        "source": source,
        "type": EVENT_TYPE_PREFIX + event_type,
        "time": datetime.now(UTC).isoformat(timespec="milliseconds").replace("+00:00", "Z"),
        "datacontenttype": "application/json",
        "data": data,
    }
    if subject is not None:
        event["subject"] = subject
    event[SEQUENCE_ATTRIBUTE] = sequence if sequence is not None else next_sequence()
    errors = schema_errors(event_type, event)
    if errors:
        raise SchemaViolation(f"eddy built an invalid {event_type} event: " + "; ".join(errors))
    if signing_key is not None:
        event[SIGNATURE_ATTRIBUTE] = event_signature(event, signing_key)
    return event


__all__ = [
    "CONTROL_EVENT_TYPES",
    "ControlEvent",
    "DecodeError",
    "Example",
    "Label",
    "Sample",
    "decode_event",
    "decode_example",
    "decode_label",
    "decode_sample",
    "encode",
    "encode_example",
    "encode_label",
    "encode_sample",
    "event_signature",
    "make_event",
    "schema_errors",
]
