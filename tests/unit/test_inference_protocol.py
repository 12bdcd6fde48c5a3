"""The Open Inference Protocol's request parsing and responses, without a broker or a
server: bodies built by Triton's own client, answers read back by it."""

from __future__ import annotations

import numpy as np
import orjson
import pytest
import tritonclient.http as triton
from tritonclient.http import InferResult

from eddy.consumers.inference.protocol import (
    BAD_REQUEST,
    BATCH_TOO_LARGE,
    VALUE_TOO_LARGE,
    InferRequest,
    ProtocolError,
    Requested,
    build_response,
    features_of_columns,
    parse_request,
)
from eddy.models.learners import Prediction


def body(*inputs: dict, **extra) -> bytes:
    return orjson.dumps({"inputs": list(inputs), **extra})


def tensor(name: str, data, datatype: str = "FP64", shape=None) -> dict:
    flat = np.asarray(data, dtype=object).reshape(-1).tolist()
    return {"name": name, "datatype": datatype, "shape": shape or [len(flat)], "data": data}


def refused(raw: bytes, status: int = 400, reason: str = BAD_REQUEST, **options) -> str:
    options.setdefault("max_batch", 64)
    with pytest.raises(ProtocolError) as caught:
        parse_request(raw, **options)
    assert (caught.value.status, caught.value.reason) == (status, reason), caught.value.message
    assert orjson.loads(caught.value.body()) == {"error": caught.value.message}
    return caught.value.message


# -- inputs ------------------------------------------------------------------------------------


def test_one_input_per_feature_by_name_in_a_batch() -> None:
    raw = body(
        tensor("amount", [42.5, 3]),
        tensor("hour", [[23], [4]], "INT64", [2, 1]),
        tensor("country", ["NL", "FR"], "BYTES"),
        tensor("card_present", [False, True], "BOOL"),
        id="r-1",
    )
    request = parse_request(raw, max_batch=64)
    assert request.id == "r-1"
    assert request.rows == [
        {"amount": 42.5, "hour": 23, "country": "NL", "card_present": False},
        {"amount": 3.0, "hour": 4, "country": "FR", "card_present": True},
    ]
    assert type(request.rows[1]["amount"]) is float  # FP64 data are floats, even 3
    assert request.outputs is None and request.binary_output is False


def test_a_features_matrix_in_the_models_order_mixed_with_categories() -> None:
    raw = body(
        tensor("features", [[1, 2], [3, 4], [5, 6]], "FP32", [3, 2]),
        tensor("color", ["red", "blue", "red"], "BYTES"),
    )
    request = parse_request(raw, max_batch=64, feature_order=["x", "y"])
    assert request.rows == [
        {"x": 1.0, "y": 2.0, "color": "red"},
        {"x": 3.0, "y": 4.0, "color": "blue"},
        {"x": 5.0, "y": 6.0, "color": "red"},
    ]
    # a stream whose feature is literally named "features" gets it by name
    named = parse_request(
        body(tensor("features", [7, 8])), max_batch=64, feature_order=["features"]
    )
    assert named.rows == [{"features": 7.0}, {"features": 8.0}]


def test_bodies_that_tritonclient_builds_binary_and_json() -> None:
    x = triton.InferInput("x", [3], "FP32")
    x.set_data_from_numpy(np.array([1.5, -2.0, 3.25], dtype=np.float32))  # binary (default)
    c = triton.InferInput("c", [3, 1], "BYTES")
    c.set_data_from_numpy(np.array([["a"], ["é"], [""]], dtype=object))
    ok = triton.InferInput("ok", [3], "BOOL")
    ok.set_data_from_numpy(np.array([True, False, True]), binary_data=False)  # JSON
    n = triton.InferInput("n", [3], "INT32")
    n.set_data_from_numpy(np.array([1, 2, 3], dtype=np.int32))
    raw, json_size = triton.InferenceServerClient.generate_request_body(
        [x, c, ok, n], request_id="abc"
    )
    request = parse_request(raw, json_size, max_batch=64)
    assert request.id == "abc"
    assert request.binary_output is True  # no outputs named: Triton asks for binary ones
    assert request.rows == [
        {"x": 1.5, "c": "a", "ok": True, "n": 1},
        {"x": -2.0, "c": "é", "ok": False, "n": 2},
        {"x": 3.25, "c": "", "ok": True, "n": 3},
    ]


@pytest.mark.parametrize(
    ("raw", "words"),
    [
        (b"{not json", "not JSON"),
        (b"[1, 2]", "JSON object"),
        (orjson.dumps({"inputs": []}), "non-empty array"),
        (orjson.dumps({"inputs": [1]}), "must be an object"),
        (body({"shape": [1], "datatype": "FP64", "data": [1]}), "needs a 'name'"),
        (body({"name": "x", "shape": "1", "datatype": "FP64", "data": [1]}), "needs a 'shape'"),
        (body({"name": "x", "shape": [-1], "datatype": "FP64", "data": [1]}), "needs a 'shape'"),
        (body(tensor("x", [1], "FLOAT")), "datatype 'FLOAT'"),
        (body(tensor("x", [1, 2], shape=[3])), "2 values; shape [3] holds 3"),
        (body(tensor("x", ["a"])), "must be numbers"),
        (body(tensor("x", [True])), "must be numbers"),
        (body(tensor("x", [1.5], "INT64")), "whole numbers"),
        (body(tensor("x", [1], "BOOL")), "true or false"),
        (body(tensor("x", [1], "BYTES")), "strings"),
        (body({"name": "x", "shape": [1], "datatype": "FP64"}), "no 'data'"),
        (body(tensor("x", [1, 2]), tensor("y", [1])), "has 1 rows"),
        (body(tensor("x", [[1, 2]], shape=[1, 2])), "shape [batch] or [batch, 1]"),
        (body(tensor("x", [1]), tensor("x", [2])), "given twice"),
        (body(tensor("x", [], shape=[0])), "at least one row"),
        (body(tensor("features", [[1, 2]], shape=[1, 2])), "no feature order"),
        (body(tensor("x", [1]), id=7), "'id' must be a string"),
        (body(tensor("x", [1]), parameters=[1]), "'parameters'"),
        (body(tensor("x", [1]), outputs=[{"nom": "predict"}]), "'outputs'"),
    ],
)
def test_bad_requests_are_400_with_the_protocols_error_shape(raw: bytes, words: str) -> None:
    assert words in refused(raw)


def test_a_features_matrix_must_fit_the_models_order() -> None:
    wide = body(tensor("features", [[1, 2, 3]], shape=[1, 3]))
    assert "[batch, 2]" in refused(wide, feature_order=["x", "y"])
    text = body(tensor("features", [["a", "b"]], "BYTES", [1, 2]))
    assert "takes numbers" in refused(text, feature_order=["x", "y"])


def test_batch_and_magnitude_bounds() -> None:
    assert "at most 4" in refused(body(tensor("x", [1] * 5)), reason=BATCH_TOO_LARGE, max_batch=4)
    message = refused(body(tensor("x", [1, 1e13])), reason=VALUE_TOO_LARGE, max_magnitude=1e12)
    assert "row 1" in message


def test_binary_data_that_does_not_add_up() -> None:
    x = triton.InferInput("x", [2], "FP64")
    x.set_data_from_numpy(np.array([1.0, np.nan]))
    raw, size = triton.InferenceServerClient.generate_request_body([x])
    assert "non-finite" in refused(raw, header_length=size)
    x.set_data_from_numpy(np.array([1.0, 2.0]))
    raw, size = triton.InferenceServerClient.generate_request_body([x])
    assert "binary data" in refused(raw + b"\0", header_length=size)  # bytes nobody claims
    assert "within the body" in refused(raw, header_length=len(raw) + 1)
    short = raw[:-1]
    assert "follow" in refused(short, header_length=size)
    document = orjson.loads(raw[:size])
    document["inputs"][0]["datatype"] = "BYTES"
    again = orjson.dumps(document)
    assert "length-prefixed" in refused(again + raw[size:], header_length=len(again))


# -- responses ---------------------------------------------------------------------------------


def predictions() -> list[Prediction]:
    return [Prediction(True, {False: 0.25, True: 0.75}), Prediction(False, {False: 0.9})]


def test_a_response_tritonclient_reads_in_binary_and_json() -> None:
    for binary in (True, False):
        request = InferRequest("r", [{}, {}], None, binary)
        raw, header = build_response(
            "cards", "online-1@20", request, predictions(), regression=False
        )
        result = InferResult.from_response_body(raw, header_length=header)
        response = result.get_response()
        assert (response["model_name"], response["model_version"], response["id"]) == (
            "cards",
            "online-1@20",
            "r",
        )
        assert result.as_numpy("predict").tolist() == [True, False]
        assert result.as_numpy("predict_proba").tolist() == [[0.25, 0.75], [0.9, 0.0]]
        proba = result.get_output("predict_proba")
        assert orjson.loads(proba["parameters"]["classes"]) == [False, True]
        assert (header is not None) is binary


def test_labels_by_their_type_and_only_the_outputs_asked_for() -> None:
    request = InferRequest(None, [{}], (Requested("predict", False),), False)
    raw, _ = build_response(
        "m", "v0002", request, [Prediction("cat", {"cat": 1.0})], regression=False
    )
    assert orjson.loads(raw)["outputs"] == [
        {"name": "predict", "datatype": "BYTES", "shape": [1], "data": ["cat"]}
    ]
    assert "id" not in orjson.loads(raw)
    raw, _ = build_response("m", "v1", request, [Prediction(2, {1: 0.4, 2: 0.6})], regression=False)
    assert orjson.loads(raw)["outputs"][0]["datatype"] == "INT64"
    raw, _ = build_response("m", "v1", request, [Prediction(1.5)], regression=True)
    assert orjson.loads(raw)["outputs"][0] == {
        "name": "predict",
        "datatype": "FP64",
        "shape": [1],
        "data": [1.5],
    }
    wrong = InferRequest(None, [{}], (Requested("predict_proba", False),), False)
    with pytest.raises(ProtocolError, match="no output 'predict_proba'"):
        build_response("m", "v1", wrong, [Prediction(1.5)], regression=True)


def test_the_champions_classes_fix_the_column_order() -> None:
    request = InferRequest(None, [{}], None, False)
    raw, _ = build_response(
        "m",
        "v2",
        request,
        [Prediction("b", {"b": 0.7, "a": 0.3})],
        regression=False,
        classes=["b", "a"],
    )
    proba = orjson.loads(raw)["outputs"][1]
    assert proba["data"] == [0.7, 0.3] and orjson.loads(proba["parameters"]["classes"]) == [
        "b",
        "a",
    ]


def test_features_behind_one_hot_columns() -> None:
    features = features_of_columns(["x", "color=red", "k=v", "k", "color=blue"])
    assert [(f.name, f.kind, f.datatype) for f in features] == [
        ("x", "number", "FP64"),
        ("color", "category", "BYTES"),
        ("k=v", "number", "FP64"),  # "k" is a column itself: "k=v" is a name, not a one-hot
        ("k", "number", "FP64"),
    ]
