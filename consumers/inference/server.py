"""Running ``eddy serve``: uvicorn in eddy's own event loop, beside the hot-swap clients.

The HTTP socket is bound first (``/v2/health/live`` answers at once, ready says 503 while
the registry is read), then the registry is read and followed. SIGTERM or SIGINT stops
accepting connections, lets requests in flight finish (at most 5 s), stops following the
registry and returns; no thread or process is left behind. ``EDDY_DATA_DIR/serve.json``
says where it listens while it runs.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import logging
import os
import signal
import socket
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import uvicorn
from prometheus_client import CollectorRegistry

from eddy.consumers.inference.app import build_app
from eddy.consumers.inference.metrics import ServeMetrics
from eddy.consumers.inference.models import ModelSet
from eddy.streams.observe.dashboard import MetricsServer
from eddy.streams.observe.metrics import process_metrics
from eddy.streams.settings import Settings

log = logging.getLogger(__name__)

SERVE_FILE = "serve.json"


class _Server(uvicorn.Server):
    """uvicorn without its own signal handlers: eddy's process decides when to stop."""

    @contextlib.contextmanager
    def capture_signals(self) -> Iterator[None]:
        yield


@dataclass
class Serving:
    """A running server: where it listens, what it holds, and how to stop it."""

    url: str
    port: int
    models: ModelSet
    metrics: ServeMetrics
    registry: CollectorRegistry
    _server: _Server

    def stop(self) -> None:
        """Ask the server to stop (it finishes requests in flight)."""
        self._server.should_exit = True


def bind(host: str, port: int) -> socket.socket:
    """A listening socket on ``host:port`` (port 0: a free one)."""
    family = socket.AF_INET6 if ":" in host else socket.AF_INET
    # IPPROTO_TCP, not 0: asyncio turns Nagle's algorithm off (TCP_NODELAY) only on
    # sockets that say they are TCP; with proto 0 every response waited ~40 ms for the
    # client's delayed ACK.
    sock = socket.socket(family, socket.SOCK_STREAM, socket.IPPROTO_TCP)
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
    try:
        sock.bind((host, port))
    except OSError:
        sock.close()
        raise
    sock.listen(1024)
    sock.setblocking(False)
    return sock


async def run_serve(
    settings: Settings,
    on_start: asyncio.Future[Serving] | None = None,
    handle_signals: bool = False,
) -> None:
    """Serve every stream's models until stopped.

    Stopped by SIGTERM/SIGINT with ``handle_signals``, or by :meth:`Serving.stop` from
    ``on_start``'s result.
    """
    serving = settings.serving
    registry = CollectorRegistry()
    process_metrics(registry)
    models = ModelSet(settings)
    metrics = ServeMetrics.create(registry, models)
    app = build_app(models, metrics, serving, registry, settings.learning.max_feature_magnitude)
    config = uvicorn.Config(
        app,
        log_config=None,
        access_log=False,
        lifespan="off",
        server_header=False,
        timeout_graceful_shutdown=5,
        timeout_keep_alive=30,
    )
    server = _Server(config)
    sock = bind(serving.host, serving.port)
    port = sock.getsockname()[1]
    shown = f"[{serving.host}]" if ":" in serving.host else serving.host
    url = f"http://{shown}:{port}"
    running = Serving(url, port, models, metrics, registry, server)
    status = settings.data_dir / SERVE_FILE
    extra: MetricsServer | None = None
    loop = asyncio.get_running_loop()
    if handle_signals:
        for sig in (signal.SIGTERM, signal.SIGINT):
            loop.add_signal_handler(sig, running.stop)
    follow: asyncio.Task[None] | None = None
    try:
        config.load()
        server.lifespan = config.lifespan_class(config)
        await server.startup(sockets=[sock])  # what uvicorn's serve() does, in three steps
        _write_status(status, url, port)
        obs = settings.observability
        if obs.metrics_port:
            extra = MetricsServer(obs.metrics_port, registry, host=obs.metrics_host).start()
        token = "on" if serving.token is not None else "off"
        log.info(
            "eddy serve: Open Inference Protocol on %s/v2 (bearer token %s); reading the "
            "registry %s",
            url,
            token,
            models.registry.topic,
        )
        follow = asyncio.create_task(_start_models(models))
        if on_start is not None:
            on_start.set_result(running)
        await server.main_loop()  # until should_exit
    finally:
        running.stop()
        if server.started:
            await server.shutdown(sockets=[sock])  # requests in flight finish first
        if follow is not None:
            follow.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await follow
        await models.stop()
        if extra is not None:
            extra.stop()
        sock.close()
        with contextlib.suppress(FileNotFoundError):
            status.unlink()
        if handle_signals:
            for sig in (signal.SIGTERM, signal.SIGINT):
                loop.remove_signal_handler(sig)
    log.info("eddy serve: stopped cleanly")


async def _start_models(models: ModelSet) -> None:
    while True:
        try:
            await models.start()
            return
        except asyncio.CancelledError:
            raise
        except Exception as ex:  # noqa: BLE001 - the broker may come later; keep trying
            log.warning("eddy serve: reading the registry failed (%s); trying again in 2 s", ex)
            await asyncio.sleep(2.0)


def _write_status(path: Path, url: str, port: int) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_suffix(".tmp")
    tmp.write_text(json.dumps({"url": url, "port": port, "pid": os.getpid()}))
    tmp.replace(path)
