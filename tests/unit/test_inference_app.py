"""``eddy serve``'s ASGI application without a broker: a stub stream holding a River
model, driven through ASGI calls (routes, token, limits, error shapes, metrics)."""

from __future__ import annotations

import asyncio
from pathlib import Path
from typing import Any

import orjson
import pytest
from prometheus_client import CollectorRegistry

from eddy.consumers.hotswap import Served
from eddy.consumers.inference.app import build_app
from eddy.consumers.inference.metrics import ServeMetrics
from eddy.consumers.inference.models import ModelSet
from eddy.models.catalogue import make_learner
from eddy.streams.settings import Settings

ROWS = [{"x": 1.0, "y": 2.0}, {"x": -3.0, "y": 0.5}]


class StubClient:
    """What :class:`ModelSet` reads of a hot-swap client."""

    def __init__(self, model: str, online: Served | None) -> None:
        self.model = model
        self.strict = True
        self.refused: list[tuple[str, str]] = []
        self.swaps = [("online", online.version, 0.0)] if online else []
        self._models = {"online": online} if online else {}

    def current(self, kind: str | None = None) -> Served | None:
        return self._models.get(kind or "online")

    def held(self) -> dict[str, str]:
        return {k: s.version for k, s in self._models.items()}

    async def stop(self) -> None:
        pass


def online_model() -> tuple[Served, Any]:
    learner = make_learner("scaled-logreg", "binary")
    xs = [{"x": float(i % 7), "y": float(i % 3)} for i in range(300)]
    learner.learn_many(xs, [x["x"] > 3 for x in xs], list(range(300)))
    served = Served(
        "online",
        "online-1@300",
        lambda rows: [p.value for p in learner.predict_many(rows)],
        "sha",
        infer=learner.predict_many,
        model=learner,
    )
    return served, learner


class Harness:
    def __init__(self, tmp_path: Path, **settings: Any) -> None:
        self.settings = Settings.build(
            data_dir=tmp_path, serve_max_batch=4, serve_max_body_bytes=2000, **settings
        )
        self.models = ModelSet(self.settings)
        self.registry = CollectorRegistry()
        self.metrics = ServeMetrics.create(self.registry, self.models)
        self.app = build_app(self.models, self.metrics, self.settings.serving, self.registry, 1e12)

    def hold(self, name: str, served: Served | None) -> None:
        self.models.clients[name] = StubClient(name, served)  # type: ignore[assignment]
        self.models.synced = True

    def call(
        self, method: str, path: str, body: bytes = b"", headers: dict[str, str] | None = None
    ) -> tuple[int, dict[str, str], bytes]:
        return asyncio.run(self._call(method, path, body, headers or {}))

    async def _call(
        self, method: str, path: str, body: bytes, headers: dict[str, str]
    ) -> tuple[int, dict[str, str], bytes]:
        scope = {
            "type": "http",
            "asgi": {"version": "3.0"},
            "http_version": "1.1",
            "method": method,
            "path": path,
            "raw_path": path.encode(),
            "query_string": b"",
            "root_path": "",
            "scheme": "http",
            "server": ("127.0.0.1", 8000),
            "client": ("127.0.0.1", 50000),
            "headers": [(k.lower().encode(), v.encode()) for k, v in headers.items()]
            + [(b"content-length", str(len(body)).encode())],
        }
        sent: list[dict[str, Any]] = []
        chunks = [body[i : i + 700] for i in range(0, len(body), 700)] or [b""]

        async def receive() -> dict[str, Any]:
            if chunks:
                chunk = chunks.pop(0)
                return {"type": "http.request", "body": chunk, "more_body": bool(chunks)}
            return {"type": "http.disconnect"}

        async def send(message: dict[str, Any]) -> None:
            sent.append(message)

        await self.app(scope, receive, send)
        start = next(m for m in sent if m["type"] == "http.response.start")
        out = b"".join(m.get("body", b"") for m in sent if m["type"] == "http.response.body")
        return (
            start["status"],
            {k.decode(): v.decode() for k, v in start["headers"]},
            out,
        )

    def errors(self, reason: str) -> float:
        total = 0.0
        for metric in self.registry.collect():
            if metric.name == "eddy_serve_errors":
                total += sum(
                    s.value
                    for s in metric.samples
                    if s.name.endswith("_total") and s.labels["reason"] == reason
                )
        return total


def infer_body(rows: list[dict[str, float]], **extra: Any) -> bytes:
    names = list(rows[0])
    inputs = [
        {"name": n, "datatype": "FP64", "shape": [len(rows)], "data": [r[n] for r in rows]}
        for n in names
    ]
    return orjson.dumps({"inputs": inputs, **extra})


def error_of(status: int, body: bytes) -> str:
    document = orjson.loads(body)
    assert set(document) - {"ready", "name"} == {"error"}, document
    assert "Traceback" not in document["error"]
    return document["error"]


def test_predictions_equal_the_online_models_own(tmp_path: Path) -> None:
    h = Harness(tmp_path)
    served, learner = online_model()
    h.hold("cards", served)
    status, _, body = h.call("POST", "/v2/models/cards/infer", infer_body(ROWS, id="q"))
    assert status == 200, body
    response = orjson.loads(body)
    assert response["model_name"] == "cards" and response["model_version"] == "online-1@300"
    assert response["id"] == "q"
    own = learner.predict_many(ROWS)
    predict, proba = response["outputs"]
    assert predict["data"] == [p.value for p in own]
    assert proba["data"] == [p.proba[c] for p in own for c in (False, True)]
    # the same through the version path (by version, by online version, by alias)
    for version in ("online-1@300", "online-1", "online"):
        status, _, again = h.call(
            "POST", f"/v2/models/cards/versions/{version}/infer", infer_body(ROWS, id="q")
        )
        assert (status, again) == (200, body)
    # the features matrix in metadata order gives the same answer
    status, _, meta = h.call("GET", "/v2/models/cards")
    metadata = orjson.loads(meta)
    order = orjson.loads(metadata["parameters"]["feature_order"])
    assert sorted(order) == ["x", "y"] and metadata["versions"] == ["online-1@300"]
    assert [i["name"] for i in metadata["inputs"]] == order
    matrix = {
        "id": "q",
        "inputs": [
            {
                "name": "features",
                "datatype": "FP64",
                "shape": [2, 2],
                "data": [[r[n] for n in order] for r in ROWS],
            }
        ],
    }
    status, _, dense = h.call("POST", "/v2/models/cards/infer", orjson.dumps(matrix))
    assert status == 200 and orjson.loads(dense)["outputs"] == response["outputs"]


def test_bad_requests_and_models_not_ready(tmp_path: Path) -> None:
    h = Harness(tmp_path)
    status, _, body = h.call("GET", "/v2/health/ready")
    assert status == 503 and "still reading the registry" in error_of(status, body)
    assert h.call("GET", "/v2/health/live")[0] == 200
    h.hold("cards", online_model()[0])
    h.hold("empty", None)
    cases = [
        ("/v2/models/cards/infer", b"{", 400, "bad_request", "not JSON"),
        ("/v2/models/cards/infer", infer_body(ROWS * 3), 400, "batch_too_large", "at most 4"),
        ("/v2/models/cards/infer", b"x" * 2001, 413, "too_large", "over 2000 bytes"),
        ("/v2/models/nope/infer", infer_body(ROWS), 404, "unknown_model", "no model 'nope'"),
        ("/v2/models/cards/versions/v0009/infer", infer_body(ROWS), 404, "unknown_version", ""),
        ("/v2/models/cards/versions/champion/infer", infer_body(ROWS), 503, "not_ready", ""),
        ("/v2/models/empty/infer", infer_body(ROWS), 503, "not_ready", "no online model"),
        (
            "/v2/models/cards/infer",
            infer_body([{"x": 1.0, "y": 2e13}]),
            400,
            "value_too_large",
            "MAGNITUDE",
        ),
    ]
    for path, body, want, reason, words in cases:
        before = h.errors(reason)
        status, headers, out = h.call("POST", path, body)
        assert status == want, (path, out)
        assert headers["content-type"] == "application/json"
        assert words in error_of(status, out)
        assert h.errors(reason) == before + 1, reason
    status, _, out = h.call("GET", "/v2/models/empty/ready")
    assert status == 503 and orjson.loads(out)["ready"] is False
    assert h.call("GET", "/v2/models/cards/ready")[0] == 200
    assert h.call("GET", "/v2/health/ready")[0] == 200  # one stream has a model
    status, _, out = h.call("GET", "/v2/nothing/here")
    assert status == 404 and "no route" in error_of(status, out)
    status, _, out = h.call("GET", "/v2/models/cards/infer")
    assert status == 405 and "not allowed" in error_of(status, out)


def test_a_model_that_raises_answers_500_without_a_traceback(tmp_path: Path) -> None:
    h = Harness(tmp_path)

    def broken(rows: list[Any]) -> list[Any]:
        raise ZeroDivisionError("a secret detail")

    h.hold("cards", Served("online", "online-1@3", broken, "sha", infer=broken, model=None))
    status, _, out = h.call("POST", "/v2/models/cards/infer", infer_body(ROWS))
    assert status == 500 and error_of(status, out) == "internal error (logged)"
    assert h.errors("internal") == 1


@pytest.mark.parametrize(
    ("header", "status"),
    [(None, 401), ("Bearer nope", 401), ("Basic s3cret", 401), ("Bearer s3cret", 200)],
)
def test_the_bearer_token(tmp_path: Path, header: str | None, status: int) -> None:
    h = Harness(tmp_path, serve_token="s3cret")
    h.hold("cards", online_model()[0])
    headers = {"Authorization": header} if header else {}
    got, response_headers, out = h.call("POST", "/v2/models/cards/infer", infer_body(ROWS), headers)
    assert got == status
    if status == 401:
        assert response_headers["www-authenticate"] == "Bearer"
        assert "bearer token" in error_of(got, out)
        assert h.call("GET", "/metrics", headers=headers)[0] == 401
    assert h.call("GET", "/v2/health/live")[0] == 200  # probes need no token
    assert h.call("GET", "/v2/health/ready")[0] == 200


def test_metrics_per_model_and_version(tmp_path: Path) -> None:
    h = Harness(tmp_path)
    h.hold("cards", online_model()[0])
    for _ in range(3):
        assert h.call("POST", "/v2/models/cards/infer", infer_body(ROWS))[0] == 200
    status, _, text = h.call("GET", "/metrics")
    lines = text.decode().splitlines()
    assert status == 200
    assert 'eddy_serve_requests_total{model="cards",version="online-1"} 3.0' in lines
    assert 'eddy_serve_rows_total{model="cards",version="online-1"} 6.0' in lines
    assert 'eddy_serve_request_seconds_count{model="cards",version="online-1"} 3.0' in lines
    assert 'eddy_serve_model_info{kind="online",model="cards",version="online-1"} 1.0' in lines
    assert "eddy_serve_ready 1.0" in lines


def test_the_listening_socket_is_tcp_so_asyncio_turns_nagle_off() -> None:
    """asyncio sets TCP_NODELAY only on sockets whose proto is IPPROTO_TCP; without it
    every response waited ~40 ms for the client's delayed ACK (bench/serve.py saw 23 req/s)."""
    import socket

    from eddy.consumers.inference.server import bind

    sock = bind("127.0.0.1", 0)
    try:
        assert sock.proto == socket.IPPROTO_TCP
    finally:
        sock.close()
