"""The ASGI application of ``eddy serve``: the Open Inference Protocol's REST routes.

- ``GET /v2/health/live``: 200 while the process runs;
- ``GET /v2/health/ready``: 200 once the registry is read and every stream of
  ``EDDY_SERVE_MODELS`` (without it, at least one stream) has a model to serve, else 503
  with the reason;
- ``GET /v2``: server metadata;
- ``GET /v2/models/{model}[/versions/{version}]``: model metadata (inputs, outputs, the
  versions held);
- ``GET /v2/models/{model}[/versions/{version}]/ready``: 200, or 503 with the reason;
- ``POST /v2/models/{model}[/versions/{version}]/infer``: an inference;
- ``GET /metrics``: Prometheus.

Every refusal is ``{"error": "<message>"}`` with 400 (the request), 401 (no or a wrong
token), 404 (no such model, version or route), 405, 413 (the body's size) or 503 (the model
is not loaded yet, with the reason); a model that raises answers 500 with the exception's
class named, never a traceback (the log has it). With ``EDDY_SERVE_TOKEN`` every route but
``/v2/health/*`` needs ``Authorization: Bearer <token>``.
"""

from __future__ import annotations

import hmac
import importlib.metadata
import logging
import time
from collections.abc import Awaitable, Callable
from typing import Any

import orjson
from prometheus_client import CONTENT_TYPE_LATEST, CollectorRegistry, generate_latest
from starlette.applications import Starlette
from starlette.background import BackgroundTask
from starlette.exceptions import HTTPException
from starlette.requests import Request
from starlette.responses import Response
from starlette.routing import Route
from starlette.types import ASGIApp, Receive, Scope, Send

from eddy.consumers.hotswap import HotSwapClient, Served, ServingError
from eddy.consumers.inference.metrics import ServeMetrics
from eddy.consumers.inference.models import ModelSet, Signature, metric_version
from eddy.consumers.inference.protocol import (
    FEATURES,
    HEADER_LENGTH,
    INTERNAL,
    NOT_FOUND,
    NOT_READY,
    PREDICT,
    PROBA,
    TOO_LARGE,
    UNAUTHORIZED,
    ProtocolError,
    bad,
    build_response,
    classes_parameter,
    label_datatype,
    parse_request,
)
from eddy.streams.settings import ServingConfig

log = logging.getLogger(__name__)

JSON = "application/json"
Endpoint = Callable[[Request], Awaitable[Response]]


def error_response(ex: ProtocolError, **extra: Any) -> Response:
    """The protocol's error object, with its status."""
    headers = {"WWW-Authenticate": "Bearer"} if ex.status == 401 else None
    body = orjson.dumps({"error": ex.message, **extra})
    return Response(body, ex.status, headers=headers, media_type=JSON)


def _json(value: Any, status: int = 200) -> Response:
    return Response(orjson.dumps(value), status, media_type=JSON)


class BearerToken:
    """ASGI middleware: every route but ``/v2/health/*`` needs the bearer token."""

    def __init__(self, app: ASGIApp, token: str, on_refused: Callable[[], None]) -> None:
        self.app = app
        self.expected = b"bearer " + token.encode()
        self.on_refused = on_refused

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        """Pass the request on if it may come in; else answer 401 in the protocol's shape."""
        if scope["type"] != "http" or scope["path"].startswith("/v2/health/"):
            await self.app(scope, receive, send)
            return
        given = b""
        for key, value in scope["headers"]:
            if key == b"authorization":
                given = value
        scheme, _, credentials = given.partition(b" ")
        if not hmac.compare_digest(scheme.lower() + b" " + credentials.strip(), self.expected):
            self.on_refused()
            why = "a wrong bearer token" if given else "no bearer token"
            ex = ProtocolError(401, UNAUTHORIZED, f"{why}: send Authorization: Bearer <token>")
            await error_response(ex)(scope, receive, send)
            return
        await self.app(scope, receive, send)


def build_app(
    models: ModelSet,
    metrics: ServeMetrics,
    serving: ServingConfig,
    registry: CollectorRegistry,
    max_magnitude: float = float("inf"),
) -> ASGIApp:
    """The application: routes over ``models``, counted in ``metrics``."""
    try:
        version = importlib.metadata.version("eddy")
    except importlib.metadata.PackageNotFoundError:  # run from a source tree
        version = "0"

    def guarded(endpoint: Endpoint) -> Endpoint:
        async def run(request: Request) -> Response:
            name = request.path_params.get("name")
            try:
                return await endpoint(request)
            except ProtocolError as ex:
                model = name if name in models.clients else "-"
                metrics.errors.labels(model, "-", ex.reason).inc()
                return error_response(ex)
            except Exception:
                log.exception("eddy serve: %s %s failed", request.method, request.url.path)
                model = name if name in models.clients else "-"
                metrics.errors.labels(model, "-", INTERNAL).inc()
                return error_response(ProtocolError(500, INTERNAL, "internal error (logged)"))

        return run

    async def live(request: Request) -> Response:
        return _json({"live": True})

    async def ready(request: Request) -> Response:
        why = server_not_ready(models)
        if why is not None:
            return error_response(ProtocolError(503, NOT_READY, why), ready=False)
        return _json({"ready": True})

    async def server_metadata(request: Request) -> Response:
        return _json({"name": "eddy", "version": version, "extensions": ["binary_tensor_data"]})

    async def model_metadata(request: Request) -> Response:
        name, version_ = request.path_params["name"], request.path_params.get("version")
        client, served = models.resolve(name, version_)
        return _json(metadata(client, served, models.signature(client, served)))

    async def model_ready(request: Request) -> Response:
        name, version_ = request.path_params["name"], request.path_params.get("version")
        try:
            _, served = models.resolve(name, version_)
        except ProtocolError as ex:
            if ex.status != 503:
                raise
            return error_response(ex, name=name, ready=False)
        return _json({"name": name, "version": served.version, "ready": True})

    async def infer(request: Request) -> Response:
        name, version_ = request.path_params["name"], request.path_params.get("version")
        body = await read_body(request, serving.max_body_bytes)
        started = time.perf_counter()
        client, served = models.resolve(name, version_)
        label = metric_version(served.version)
        try:
            signature = models.signature(client, served)
            parsed = parse_request(
                body,
                header_length(request),
                max_batch=serving.max_batch,
                max_magnitude=max_magnitude,
                feature_order=signature.feature_order,
            )
            predictions = predict(served, parsed.rows)
            content, json_length = build(name, served, parsed, predictions, signature)
        except ProtocolError as ex:
            metrics.errors.labels(name, label, ex.reason).inc()
            return error_response(ex)
        elapsed = time.perf_counter() - started
        metrics.requests.labels(name, label).inc()
        metrics.rows.labels(name, label).inc(len(parsed.rows))
        metrics.latency.labels(name, label).observe(elapsed)
        headers, media = None, JSON
        if json_length is not None:
            headers, media = {"Inference-Header-Content-Length": str(json_length)}, None
        task = None
        if serving.shadow:
            other = client.current("online" if served.kind == "champion" else "champion")
            if other is not None:
                task = BackgroundTask(shadow, client, served, other, parsed.rows, predictions)
        media = media or "application/octet-stream"
        return Response(content, headers=headers, media_type=media, background=task)

    async def shadow(
        client: HotSwapClient, served: Served, other: Served, rows: list[Any], answered: list[Any]
    ) -> None:
        try:
            theirs = other.infer(rows)
        except Exception:  # noqa: BLE001 - a shadow's failure never reaches a client
            metrics.shadow.labels(client.model, "error").inc(len(rows))
            return
        agree = sum(1 for a, b in zip(answered, theirs, strict=True) if _agree(a.value, b.value))
        metrics.shadow.labels(client.model, "agree").inc(agree)
        metrics.shadow.labels(client.model, "disagree").inc(len(rows) - agree)

    async def prometheus(request: Request) -> Response:
        return Response(generate_latest(registry), media_type=CONTENT_TYPE_LATEST)

    routes = [
        Route("/v2/health/live", live, methods=["GET"]),
        Route("/v2/health/ready", ready, methods=["GET"]),
        Route("/v2", server_metadata, methods=["GET"]),
        Route("/v2/", server_metadata, methods=["GET"]),
        Route("/metrics", prometheus, methods=["GET"]),
    ]
    for prefix in ("/v2/models/{name}", "/v2/models/{name}/versions/{version}"):
        routes += [
            Route(prefix, guarded(model_metadata), methods=["GET"]),
            Route(prefix + "/ready", guarded(model_ready), methods=["GET"]),
            Route(prefix + "/infer", guarded(infer), methods=["POST"]),
        ]

    async def http_error(request: Request, exc: Exception) -> Response:
        assert isinstance(exc, HTTPException)
        if exc.status_code == 405:
            msg = f"{request.method} is not allowed on {request.url.path}"
            ex = ProtocolError(405, NOT_FOUND, msg)
        else:
            ex = ProtocolError(exc.status_code, NOT_FOUND, f"no route {request.url.path}")
        metrics.errors.labels("-", "-", ex.reason).inc()
        return error_response(ex)

    async def internal_error(request: Request, exc: Exception) -> Response:
        metrics.errors.labels("-", "-", INTERNAL).inc()
        return error_response(ProtocolError(500, INTERNAL, "internal error (logged)"))

    app: ASGIApp = Starlette(
        routes=routes,
        exception_handlers={HTTPException: http_error, Exception: internal_error},
    )
    if serving.token is not None:
        unauthorized = metrics.errors.labels("-", "-", UNAUTHORIZED)
        app = BearerToken(app, serving.token.reveal(), unauthorized.inc)
    return app


def server_not_ready(models: ModelSet) -> str | None:
    """Why the server is not ready, or ``None`` when it is."""
    if not models.synced:
        return "eddy serve is still reading the registry"
    if models.allowed is not None:
        for name in sorted(models.allowed):
            client = models.clients.get(name)
            if client is None:
                continue
            try:
                models.resolve(name, None)
            except ProtocolError as ex:
                return ex.message
        return None
    for name in models.clients:
        try:
            models.resolve(name, None)
        except ProtocolError:
            continue
        return None
    served = ", ".join(sorted(models.clients)) or "none"
    return f"no stream has a model to serve yet (streams in the registry: {served})"


async def read_body(request: Request, limit: int) -> bytes:
    """The request body, at most ``limit`` bytes (413 beyond)."""
    if request.headers.get("content-encoding", "identity") != "identity":
        msg = "compressed request bodies (Content-Encoding) are not taken; send them plain"
        raise bad(msg)
    declared = request.headers.get("content-length")
    too_large = ProtocolError(
        413, TOO_LARGE, f"the request body is over {limit} bytes (EDDY_SERVE_MAX_BODY_BYTES)"
    )
    if declared is not None and declared.isdigit() and int(declared) > limit:
        raise too_large
    chunks, size = [], 0
    async for chunk in request.stream():
        size += len(chunk)
        if size > limit:
            raise too_large
        chunks.append(chunk)
    return b"".join(chunks)


def header_length(request: Request) -> int | None:
    """The binary extension's JSON length, if the request uses it."""
    raw = request.headers.get(HEADER_LENGTH)
    if raw is None:
        return None
    if not raw.strip().isdigit():
        msg = f"Inference-Header-Content-Length must be a whole number, got {raw!r}"
        raise bad(msg)
    return int(raw)


def predict(served: Served, rows: list[dict[str, Any]]) -> list[Any]:
    """Predict ``rows``; a row the model refuses or cannot answer is a 400 or a 503."""
    try:
        predictions = served.infer(rows)
    except ServingError as ex:
        raise ProtocolError(400, FEATURES, str(ex)) from ex
    empty = [i for i, p in enumerate(predictions) if p.value is None]
    if empty:
        learned = served.version.partition("@")[2]
        if len(empty) == len(rows) and learned in ("", "0"):
            msg = f"the online model {served.version} has learned nothing yet: it cannot answer"
            raise ProtocolError(503, NOT_READY, msg)
        shown = ", ".join(map(str, empty[:10]))
        msg = (
            f"the {served.kind} model {served.version} gives no prediction for row(s) {shown}: "
            "a feature of a type it does not take (text for a numbers-only model?)"
        )
        raise ProtocolError(400, FEATURES, msg)
    return predictions


def build(
    name: str, served: Served, parsed: Any, predictions: list[Any], signature: Signature
) -> tuple[bytes, int | None]:
    """The response body (and binary header length) for ``predictions``."""
    return build_response(
        name,
        served.version,
        parsed,
        predictions,
        regression=signature.regression,
        classes=signature.classes,
    )


def metadata(client: HotSwapClient, served: Served, signature: Signature) -> dict[str, Any]:
    """The model metadata object of the protocol, with eddy's details in ``parameters``."""
    inputs = [
        {"name": f.name, "datatype": f.datatype, "shape": [-1]} for f in signature.features or ()
    ]
    classes = list(signature.classes) if signature.classes is not None else None
    if signature.regression:
        label = "FP64"
    elif classes:
        label = label_datatype(classes, False)
    else:
        label = "BOOL" if signature.task == "binary" else "BYTES"
    outputs: list[dict[str, Any]] = [{"name": PREDICT, "datatype": label, "shape": [-1]}]
    if not signature.regression:
        width = len(classes) if classes else (2 if signature.task == "binary" else -1)
        outputs.append({"name": PROBA, "datatype": "FP64", "shape": [-1, width]})
    parameters: dict[str, Any] = {
        "kind": served.kind,
        "version": served.version,
        "task": signature.task,
        "features_from": signature.source,
        "strict": client.strict if served.kind == "champion" else False,
    }
    order = signature.feature_order
    if order:
        parameters["feature_order"] = orjson.dumps(order).decode()
    if classes:
        parameters["classes"] = classes_parameter(classes)
    return {
        "name": client.model,
        "versions": list(client.held().values()),
        "platform": "onnxruntime_onnx" if served.kind == "champion" else "eddy_online",
        "inputs": inputs,
        "outputs": outputs,
        "parameters": parameters,
    }


def _agree(a: Any, b: Any) -> bool:
    if isinstance(a, float) and isinstance(b, float):
        return abs(a - b) <= 0.1 * max(abs(a), 1e-12)
    return bool(a == b)
