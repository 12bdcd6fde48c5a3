import itertools

import pytest
from river.datasets import synth

from eddy.streams.ops import sources


def take(it, n):
    return list(itertools.islice(it, n))


def test_abrupt_drift_far_into_the_stream_does_not_overflow():
    # River's ConceptDriftStream raises OverflowError in math.exp for this (width 1).
    stream = sources.open_named("sea", seed=1, variant=0, drift_at=13_337, drift_to=3)
    assert len(take(stream, 14_000)) == 14_000


def test_drift_switches_concept_at_the_position():
    before = take(sources._clean(synth.SEA(variant=0, seed=5)), 100)
    after = take(sources._clean(synth.SEA(variant=3, seed=6)), 100)
    mixed = take(sources.open_named("sea", seed=5, variant=0, drift_at=51, drift_to=3), 100)
    # width 1: samples 1-50 from the first concept, 52-100 from the second
    assert mixed[:50] == before[:50]
    assert mixed[51:] == after[1:50]


def test_gradual_drift_matches_rivers_concept_drift_stream_where_river_works():
    ours = take(
        sources.concept_drift(
            synth.SEA(variant=0, seed=1), synth.SEA(variant=2, seed=2), 500, 200, 9
        ),
        1000,
    )
    river = take(
        synth.ConceptDriftStream(
            synth.SEA(variant=0, seed=1),
            synth.SEA(variant=2, seed=2),
            seed=9,
            position=500,
            width=200,
        ),
        1000,
    )
    assert ours == river


def test_feature_names_are_strings_for_json():
    x, y = next(sources.open_named("sea"))
    assert set(x) == {"0", "1", "2"}
    assert isinstance(y, bool)


@pytest.mark.parametrize(
    ("kwargs", "needle"),
    [
        ({"name": "nope"}, "no source named 'nope'"),
        ({"name": "sea", "variant": 7}, "variants 0-3"),
        ({"name": "phishing", "drift_at": 10}, "synthetic"),
        ({"name": "friedman", "drift_at": 10}, "no concepts"),
    ],
)
def test_bad_source_options_say_what_is_allowed(kwargs, needle):
    with pytest.raises((KeyError, ValueError), match=needle):
        sources.open_named(**kwargs)


def test_bundled_dataset_needs_no_download():
    rows = list(sources.open_named("phishing"))
    assert len(rows) == 1250


def test_csv_and_jsonl_files(tmp_path):
    csv = tmp_path / "d.csv"
    csv.write_text("a,b,y\n1,2.5,true\n3,4,false\n")
    assert list(sources.open_file(csv, "y")) == [
        ({"a": 1.0, "b": 2.5}, True),
        ({"a": 3.0, "b": 4.0}, False),
    ]
    jsonl = tmp_path / "d.jsonl"
    jsonl.write_text('{"x": 1, "z": 2, "t": "cat"}\n\n{"features": {"x": 3}, "t": "dog"}\n')
    assert list(sources.open_file(jsonl, "t")) == [({"x": 1, "z": 2}, "cat"), ({"x": 3}, "dog")]


def test_file_rows_with_non_numeric_features_name_the_line(tmp_path):
    csv = tmp_path / "d.csv"
    csv.write_text("a,y\n1,0\nabc,1\n")
    with pytest.raises(ValueError, match=r"d.csv:3: feature 'a'"):
        list(sources.open_file(csv, "y"))
    with pytest.raises(ValueError, match="no column 'label'"):
        list(sources.open_file(csv, "label"))
