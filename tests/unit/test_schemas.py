import pytest
from jsonschema import Draft202012Validator

from eddy.streams.wire.codec import CONTROL_EVENT_TYPES, schema_documents, schema_errors

DOCS = schema_documents()


@pytest.mark.parametrize("name", sorted(DOCS))
def test_every_schema_is_valid_json_schema_2020_12(name):
    doc = DOCS[name]
    assert doc["$schema"] == "https://json-schema.org/draft/2020-12/schema"
    Draft202012Validator.check_schema(doc)


@pytest.mark.parametrize(
    ("name", "example"),
    [(n, ex) for n, d in sorted(DOCS.items()) for ex in d.get("examples", [])],
)
def test_schema_examples_are_valid(name, example):
    assert schema_errors(name, example) == []


def test_every_event_kind_has_a_schema():
    for name in ("sample", "label", "prediction", "metrics", *CONTROL_EVENT_TYPES):
        assert name in DOCS, name
        assert DOCS[name].get("examples"), f"{name} has no example"


@pytest.mark.parametrize("name", CONTROL_EVENT_TYPES)
def test_control_events_require_cloudevents_attributes(name):
    example = dict(DOCS[name]["examples"][0])
    for attribute in ("specversion", "id", "source", "type", "time"):
        broken = {k: v for k, v in example.items() if k != attribute}
        assert schema_errors(name, broken), f"{name} accepted an event without {attribute}"
    assert schema_errors(name, example | {"specversion": "0.3"})
    other = next(t for t in CONTROL_EVENT_TYPES if t != name)
    assert schema_errors(name, example | {"type": "eddy." + other})


def test_names_cannot_carry_path_tricks_or_newlines():
    example = DOCS["sample"]["examples"][1]
    for bad in ("../etc", ".hidden", "a/b", "ok\n", "", "x" * 129):
        assert schema_errors("sample", example | {"stream": bad}), bad
