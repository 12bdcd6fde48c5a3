"""The codec: hand-written hot-path checks agree with the JSON Schemas, and never crash;
the batch decoder gives what they give."""

import json
from typing import Any

import orjson
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from eddy.streams.exceptions import DecodeError, InvalidJSON, MessageTooLarge, SchemaViolation
from eddy.streams.wire.batch import decode_labels, decode_samples
from eddy.streams.wire.codec import (
    MAX_TIMESTAMP_MS,
    Label,
    Sample,
    decode_event,
    decode_example,
    decode_label,
    decode_sample,
    encode,
    encode_label,
    encode_sample,
    make_event,
    schema_errors,
)

# -- examples ------------------------------------------------------------------------------


def test_sample_with_named_features_round_trips():
    s = Sample(id="a1", features={"x1": 0.5, "x2": 3}, ts=1, label=None, stream="fraud")
    assert decode_sample(encode_sample(s)) == s


def test_sample_with_dense_vector_and_inline_label():
    s = decode_sample(b'{"id":"v","features":[1,2.5,-3],"label":"spam"}')
    assert s.features == [1, 2.5, -3]
    assert s.label == "spam"
    assert s.stream == "default"
    assert s.ts is None


@pytest.mark.parametrize("value", [True, 3, -1.5, "cat"])
def test_labels_may_be_bool_int_number_or_string(value):
    label = Label(id="a", label=value, ts=5)
    decoded = decode_label(encode_label(label))
    assert decoded == label
    assert type(decoded.label) is type(value)


@pytest.mark.parametrize(
    ("raw", "error", "needle"),
    [
        (b"", InvalidJSON, "not valid JSON"),
        (b"{", InvalidJSON, "not valid JSON"),
        (b'{"id":"a","features":{"x":NaN}}', InvalidJSON, "not valid JSON"),
        (b'{"id":"a","features":{"x":1e999}}', InvalidJSON, "infinity"),
        (b"\xff\xfe", InvalidJSON, "UTF-8"),
        (b"[]", SchemaViolation, "must be a JSON object"),
        (b'{"features":{"x":1}}', SchemaViolation, "missing required field(s) id"),
        (b'{"id":"a"}', SchemaViolation, "features"),
        (b'{"id":"","features":{"x":1}}', SchemaViolation, "$.id"),
        (b'{"id":7,"features":{"x":1}}', SchemaViolation, "$.id"),
        (b'{"id":"a","features":{}}', SchemaViolation, "1-10000 entries"),
        (b'{"id":"a","features":[]}', SchemaViolation, "1-10000 entries"),
        (b'{"id":"a","features":{"x":""}}', SchemaViolation, "$.features.x"),
        (b'{"id":"a","features":{"x":null}}', SchemaViolation, "$.features.x"),
        (b'{"id":"a","features":{"x":[1]}}', SchemaViolation, "$.features.x"),
        (b'{"id":"a","features":["red"]}', SchemaViolation, "$.features[0]"),
        (b'{"id":"a","features":[1,null]}', SchemaViolation, "$.features[1]"),
        (b'{"id":"a","features":"x"}', SchemaViolation, "$.features"),
        (b'{"id":"a","features":{"x":1},"ts":-1}', SchemaViolation, "$.ts"),
        (b'{"id":"a","features":{"x":1},"ts":1.5}', SchemaViolation, "$.ts"),
        (b'{"id":"a","features":{"x":1},"label":null}', SchemaViolation, "$.label"),
        (b'{"id":"a","features":{"x":1},"label":""}', SchemaViolation, "$.label"),
        (b'{"id":"a","features":{"x":1},"stream":"../x"}', SchemaViolation, "$.stream"),
        (b'{"id":"a","features":{"x":1},"feature":{}}', SchemaViolation, "unknown field"),
    ],
)
def test_bad_samples_are_rejected_with_a_reason(raw, error, needle):
    with pytest.raises(error) as info:
        decode_sample(raw)
    assert needle in str(info.value)
    # the hand-written checks and the JSON Schema agree on every JSON case here
    try:
        value = orjson.loads(raw)
    except orjson.JSONDecodeError:
        return
    assert schema_errors("sample", value)


def test_oversized_messages_are_refused_before_parsing():
    raw = encode_sample(Sample(id="a", features=[0.0] * 5000))
    with pytest.raises(MessageTooLarge, match="over the 1000-byte cap"):
        decode_sample(raw, max_bytes=1000)


def test_a_whole_number_float_timestamp_is_an_integer_as_in_json_schema():
    assert decode_sample(b'{"id":"a","features":[1],"ts":5.0}').ts == 5


def test_none_value_is_rejected_not_crashed():
    with pytest.raises(InvalidJSON, match="expected bytes"):
        decode_sample(None)  # a Kafka tombstone


# -- agreement with the schemas and robustness (property-based) -------------------------------

numbers = st.one_of(
    st.integers(-(2**63), 2**63 - 1), st.floats(allow_nan=False, allow_infinity=False)
)
json_scalars = st.one_of(st.none(), st.booleans(), numbers, st.text(max_size=5))
json_values = st.recursive(
    json_scalars,
    lambda inner: (
        st.lists(inner, max_size=3) | st.dictionaries(st.text(max_size=3), inner, max_size=3)
    ),
    max_leaves=8,
)


def mostly(valid: st.SearchStrategy, invalid: st.SearchStrategy) -> st.SearchStrategy:
    """Valid values three times in four, so both verdicts are well covered."""
    return st.integers(0, 3).flatmap(lambda i: invalid if i == 0 else valid)


ids = mostly(
    st.text(min_size=1, max_size=4),
    st.one_of(st.just(""), st.text(min_size=255, max_size=258), json_values),
)
features = mostly(
    st.one_of(
        st.dictionaries(st.text(min_size=1, max_size=3), numbers, min_size=1, max_size=4),
        st.lists(numbers, min_size=1, max_size=4),
    ),
    st.one_of(
        st.dictionaries(st.text(max_size=3), st.one_of(numbers, json_values), max_size=4),
        st.lists(st.one_of(numbers, json_values), max_size=4),
        st.dictionaries(st.sampled_from(["", "a" * 256, "a" * 257]), numbers, min_size=1),
        json_values,
    ),
)
timestamps = mostly(
    st.integers(0, MAX_TIMESTAMP_MS),
    st.one_of(
        st.integers(-5, -1),
        st.integers(MAX_TIMESTAMP_MS - 2, MAX_TIMESTAMP_MS + 2),
        st.floats(-2, 2, allow_nan=False),
        json_values,
    ),
)
label_values = mostly(
    st.one_of(st.booleans(), numbers, st.text(min_size=1, max_size=3)),
    st.one_of(st.just(""), st.text(min_size=256, max_size=257), json_values),
)
streams = mostly(
    st.from_regex(r"[A-Za-z0-9][A-Za-z0-9._-]{0,5}", fullmatch=True),
    st.one_of(
        st.sampled_from(["", ".x", "-x", "a/b", "ok\n", "é", "a" * 128, "a" * 129]), json_values
    ),
)


def objects(fields: dict) -> st.SearchStrategy:
    """Dicts with any subset of ``fields`` (usually the required ones) and maybe a stranger."""
    required = dict(list(fields.items())[:2])
    rest = dict(list(fields.items())[2:])
    return mostly(
        st.fixed_dictionaries(required, optional=rest),
        st.fixed_dictionaries({}, optional=fields | {"extra": json_values}),
    )


sample_like = objects(
    {"id": ids, "features": features, "ts": timestamps, "label": label_values, "stream": streams}
)
label_like = objects({"id": ids, "label": label_values, "ts": timestamps})


def _accepts(decode, raw: bytes) -> bool:
    try:
        decode(raw)
    except DecodeError as ex:
        assert str(ex), "every rejection carries a reason"
        return False
    return True


@given(sample_like)
def test_sample_decoder_agrees_with_the_sample_schema(value):
    raw = orjson.dumps(value)
    assert _accepts(decode_sample, raw) == (schema_errors("sample", orjson.loads(raw)) == [])


@given(label_like)
def test_label_decoder_agrees_with_the_label_schema(value):
    raw = orjson.dumps(value)
    assert _accepts(decode_label, raw) == (schema_errors("label", orjson.loads(raw)) == [])


@given(st.binary(max_size=200))
def test_decoders_never_crash_on_arbitrary_bytes(raw):
    for decode in (decode_sample, decode_label, decode_event, decode_example):
        _accepts(decode, raw)


@given(json_values)
def test_decoders_never_crash_on_arbitrary_json(value):
    raw = orjson.dumps(value)
    for decode in (decode_sample, decode_label, decode_event, decode_example):
        _accepts(decode, raw)


# -- control events ------------------------------------------------------------------------

DRIFT = {
    "stream": "default",
    "model_version": "online-1",
    "detector": "ADWIN",
    "level": "drift",
    "position": {"partition": 0, "offset": 10, "sample_count": 11},
    "metrics_before": {"accuracy": 0.9},
    "metrics_after": {"accuracy": 0.6},
}


def test_control_event_round_trips_as_cloudevents():
    event = make_event("drift.detected", "eddy/learner/default", DRIFT, subject="default")
    assert event["specversion"] == "1.0"
    assert event["type"] == "eddy.drift.detected"
    decoded = decode_event(encode(event))
    assert decoded.type == "drift.detected"
    assert decoded.data == DRIFT
    assert decoded.dedup_key == ("eddy/learner/default", event["id"])


def test_eddy_refuses_to_build_an_event_its_consumers_would_reject():
    with pytest.raises(SchemaViolation, match="level"):
        make_event("drift.detected", "eddy/test", DRIFT | {"level": "panic"})


def test_unknown_control_event_types_are_rejected():
    event = make_event("drift.detected", "eddy/test", DRIFT) | {"type": "eddy.model.deleted"}
    with pytest.raises(SchemaViolation, match="unknown control event type"):
        decode_event(encode(event))


def test_extension_attributes_are_kept():
    event = make_event("drift.detected", "eddy/test", DRIFT) | {"traceparent": "00-ab-cd-01"}
    extensions = decode_event(encode(event)).extensions
    assert extensions["traceparent"] == "00-ab-cd-01" and isinstance(extensions["eddyseq"], int)


# -- the batch decoder (msgspec): the same verdicts, events and reasons ----------------------


def _verdict(result: Any) -> Any:
    """What a decoder made of a record: the event's fields, or the error's class and text."""
    if isinstance(result, DecodeError):
        return (type(result).__name__, str(result))
    return (type(result).__name__, *(repr(getattr(result, f)) for f in result.__slots__))


def _one_by_one(decode, raw: Any) -> Any:
    try:
        return decode(raw, 1_048_576)
    except DecodeError as ex:
        return ex


def _same_as_the_codec(raws: list[Any]) -> None:
    for batch, one in ((decode_samples, decode_sample), (decode_labels, decode_label)):
        got = batch(raws, 1_048_576)
        assert len(got) == len(raws)
        for raw, result in zip(raws, got, strict=True):
            assert _verdict(result) == _verdict(_one_by_one(one, raw)), raw


def _dumps(value: Any) -> bytes:
    # json, not orjson: integers beyond 64 bits must reach the decoders too
    return json.dumps(value, ensure_ascii=False).encode()


@settings(max_examples=400)
@given(st.lists(sample_like, max_size=6))
def test_the_batch_decoder_gives_the_codecs_samples_and_reasons(values):
    raws = [_dumps(v) for v in values]
    _same_as_the_codec(raws)
    for raw, result in zip(raws, decode_samples(raws, 1_048_576), strict=True):
        valid = schema_errors("sample", json.loads(raw)) == []
        assert (not isinstance(result, DecodeError)) == valid, raw


@settings(max_examples=300)
@given(st.lists(label_like, max_size=6))
def test_the_batch_decoder_gives_the_codecs_labels_and_reasons(values):
    raws = [_dumps(v) for v in values]
    _same_as_the_codec(raws)
    for raw, result in zip(raws, decode_labels(raws, 1_048_576), strict=True):
        valid = schema_errors("label", json.loads(raw)) == []
        assert (not isinstance(result, DecodeError)) == valid, raw


@given(st.lists(st.binary(max_size=120), max_size=5))
def test_the_batch_decoder_agrees_on_arbitrary_bytes(raws):
    _same_as_the_codec(raws)


@pytest.mark.parametrize(
    "raw",
    [
        b'{"id":"a","id":"b","features":{"x":1}}',  # duplicate keys: the last wins
        b'{"id":"a","features":{"x":1,"x":"c"}}',
        b'{"id":"a","features":{"x":1},"label":null}',
        b'{"id":"a","features":{"x":1},"ts":null}',
        b'{"id":"a","features":{"x":1},"ts":1.0}',
        b'{"id":"a","features":{"x":1},"ts":-0.0}',
        b'{"id":"a","features":{"x":123456789012345678901234567890}}',
        b'{"id":"a","features":{"x":18446744073709551616}}',
        b'{"id":"a","features":{"x":-9223372036854775808}}',
        b'{"id":"a","features":{"x":1e999}}',
        b'{"id":"a","features":{"x":1.7976931348623157e308}}',
        b'{"id":"a","features":{"x":-0.0}}',
        b'{"id":"a","features":{"x":NaN}}',
        b'{"id":"\\ud800","features":{"x":1}}',
        b'\xef\xbb\xbf{"id":"a","features":{"x":1}}',
        b'{"id":"a","features":{"x":1}}trailing',
        b'{"id":"a","features":{"x":1},"stream":"ok\\n"}',
        b'{"id":"a","features":{"x":1},"stream":"\xc3\xa9"}',
        b'{"id":"\xf0\x9f\x98\x80","features":{"\\u0000":true}}',
        b'{"id":"a","features":[]}',
        b'{"id":"a","features":{}}',
        b'{"id":"a","label":true}',
        b'{"id":"a","label":""}',
        b'{"id":"a","label":1.5,"ts":253402300799999}',
        b'{"id":"a","label":1.5,"ts":253402300800000}',
        b"[]",
        b"",
        None,
        b'{"id": "x", "features": {"a": 0.1}}' + b" " * 1_048_576,
    ],
)
def test_the_batch_decoder_on_the_edges(raw):
    _same_as_the_codec([raw])
