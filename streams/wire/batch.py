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

from collections.abc import Sequence
from typing import Annotated

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
    out: list[Sample | DecodeError] = []
    decode = _samples.decode
    for raw in raws:
        try:
            if raw is None or len(raw) > max_bytes:
                raise msgspec.DecodeError  # decode_sample says why
            w = decode(raw)
        except (msgspec.DecodeError, TypeError):
            out.append(_slow(decode_sample, raw, max_bytes))
            continue
        out.append(
            Sample(
                w.id,
                w.features,
                None if w.ts is UNSET else w.ts,
                None if w.label is UNSET else w.label,
                "default" if w.stream is UNSET else w.stream,
            )
        )
    return out


def decode_labels(raws: Sequence[bytes | None], max_bytes: int) -> list[Label | DecodeError]:
    """Each record's :class:`Label`, or the :class:`DecodeError` that
    :func:`~eddy.streams.wire.codec.decode_label` raises for it."""
    out: list[Label | DecodeError] = []
    decode = _labels.decode
    for raw in raws:
        try:
            if raw is None or len(raw) > max_bytes:
                raise msgspec.DecodeError
            w = decode(raw)
        except (msgspec.DecodeError, TypeError):
            out.append(_slow(decode_label, raw, max_bytes))
            continue
        out.append(Label(w.id, w.label, None if w.ts is UNSET else w.ts))
    return out


def _slow(decode: object, raw: bytes | None, max_bytes: int) -> Sample | Label | DecodeError:
    try:
        return decode(raw, max_bytes)  # type: ignore[operator, no-any-return]
    except DecodeError as ex:
        return ex
