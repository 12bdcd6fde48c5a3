"""Decoding a fetched batch of samples or labels in one call, in C where it can.

A record is decoded and validated by msgspec against a typed description of its schema
(``schemas/sample.json``, ``schemas/label.json``), in one pass over its bytes. The typed
description is kept at least as strict as the schema: what it accepts, the schema
accepts, and it gives the very :class:`~eddy.streams.wire.codec.Sample` or
:class:`~eddy.streams.wire.codec.Label` that :func:`~eddy.streams.wire.codec.decode_sample`
and :func:`~eddy.streams.wire.codec.decode_label` give. A record it refuses goes through
those decoders, which decide and say why (the dead-letter reasons of today); where the
typed description is stricter than the schema (``"ts": 1.0``, integers beyond 64 bits,
a stream name only the schema's own regex accepts), they accept it. So the verdicts are
the schema's, which ``tests/unit/test_codec.py`` checks against jsonschema on generated
events.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from typing import Annotated, Any

import msgspec
from msgspec import UNSET, Meta, UnsetType

from eddy.streams.exceptions import DecodeError
from eddy.streams.wire.codec import (
    MAX_CATEGORY_LENGTH,
    MAX_FEATURE_NAME_LENGTH,
    MAX_FEATURES,
    MAX_ID_LENGTH,
    MAX_STRING_LABEL_LENGTH,
    MAX_TIMESTAMP_MS,
    Label,
    Sample,
    decode_label,
    decode_sample,
)

_Int = Annotated[int, Meta(ge=-(2**63), le=2**63 - 1)]  # what orjson reads as an int
_Id = Annotated[str, Meta(min_length=1, max_length=MAX_ID_LENGTH)]
_FeatureName = Annotated[str, Meta(min_length=1, max_length=MAX_FEATURE_NAME_LENGTH)]
_Category = Annotated[str, Meta(min_length=1, max_length=MAX_CATEGORY_LENGTH)]
_Named = Annotated[
    dict[_FeatureName, bool | _Int | float | _Category],
    Meta(min_length=1, max_length=MAX_FEATURES),
]
_Dense = Annotated[list[bool | _Int | float], Meta(min_length=1, max_length=MAX_FEATURES)]
_Timestamp = Annotated[int, Meta(ge=0, le=MAX_TIMESTAMP_MS)]
_LabelValue = (
    bool | _Int | float | Annotated[str, Meta(min_length=1, max_length=MAX_STRING_LABEL_LENGTH)]
)
_Stream = Annotated[str, Meta(pattern=r"^[A-Za-z0-9][A-Za-z0-9._-]{0,127}\Z")]


class _SampleWire(msgspec.Struct, forbid_unknown_fields=True):
    id: _Id
    features: _Named | _Dense
    ts: _Timestamp | UnsetType = UNSET
    label: _LabelValue | UnsetType = UNSET
    stream: _Stream | UnsetType = UNSET


class _LabelWire(msgspec.Struct, forbid_unknown_fields=True):
    id: _Id
    label: _LabelValue
    ts: _Timestamp | UnsetType = UNSET


_samples = msgspec.json.Decoder(_SampleWire)
_labels = msgspec.json.Decoder(_LabelWire)


def decode_samples(raws: Sequence[bytes | None], max_bytes: int) -> list[Sample | DecodeError]:
    """Each record's :class:`Sample`, or the :class:`DecodeError` that
    :func:`~eddy.streams.wire.codec.decode_sample` raises for it."""
    return _decode(raws, max_bytes, _samples.decode, _sample, decode_sample)  # type: ignore[return-value]


def decode_labels(raws: Sequence[bytes | None], max_bytes: int) -> list[Label | DecodeError]:
    """Each record's :class:`Label`, or the :class:`DecodeError` that
    :func:`~eddy.streams.wire.codec.decode_label` raises for it."""
    return _decode(raws, max_bytes, _labels.decode, _label, decode_label)  # type: ignore[return-value]


def _sample(w: _SampleWire) -> Sample:
    return Sample(
        w.id,
        w.features,
        None if w.ts is UNSET else w.ts,
        None if w.label is UNSET else w.label,
        "default" if w.stream is UNSET else w.stream,
    )


def _label(w: _LabelWire) -> Label:
    return Label(w.id, w.label, None if w.ts is UNSET else w.ts)


def _decode(
    raws: Sequence[bytes | None],
    max_bytes: int,
    fast: Callable[[bytes], Any],
    event: Callable[[Any], Sample | Label],
    slow: Callable[[bytes | None, int], Sample | Label],
) -> list[Sample | Label | DecodeError]:
    out: list[Sample | Label | DecodeError] = []
    for raw in raws:
        try:
            if raw is None or len(raw) > max_bytes:
                raise msgspec.DecodeError  # the codec's decoder says why
            out.append(event(fast(raw)))
        except (msgspec.DecodeError, TypeError):
            out.append(_slow(slow, raw, max_bytes))
    return out


def _slow(
    decode: Callable[[bytes | None, int], Sample | Label], raw: bytes | None, max_bytes: int
) -> Sample | Label | DecodeError:
    try:
        return decode(raw, max_bytes)
    except DecodeError as ex:
        return ex
