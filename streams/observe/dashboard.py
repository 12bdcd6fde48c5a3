"""The worker's HTTP endpoint: Prometheus ``/metrics`` and a live dashboard page.

In embedded mode no Grafana runs, so the worker serves a page of the same
figures. The page is a pure view of the process's Prometheus registry:
:class:`History` samples the registry once a second into a bounded series
(throughput, prequential metric, lag, join state, memory), and adds the
control events the worker saw (drifts, retrains, versions, exports). The page
polls ``/api/state`` and draws it; nothing on it is computed anywhere else.

Routes: ``/`` (the page), ``/api/state`` (JSON), ``/metrics`` (Prometheus text
format), ``/healthz``.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import threading
import time
from collections import deque
from collections.abc import Callable, Iterable
from dataclasses import asdict, dataclass
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from importlib import resources
from typing import Any

import orjson
from prometheus_client import CONTENT_TYPE_LATEST, CollectorRegistry, generate_latest
from prometheus_client.metrics_core import Metric

from eddy.streams.exceptions import ConfigError

log = logging.getLogger(__name__)

# Rolling metrics charted per stream, best first: classification, then regression.
PRIMARY_METRICS = ("accuracy", "mae")


@dataclass(frozen=True)
class Point:
    """One sample of the worker's figures."""

    t: float  # unix seconds
    learned_per_s: float
    consumed_per_s: float
    predicted_per_s: float  # predictions served when samples arrived
    staleness_s: float  # mean staleness of the predictions of the last interval
    metric: dict[str, float]  # stream -> rolling primary metric of the online model
    champion: dict[str, float]  # stream -> the champion's on the same labels
    lag: dict[str, float]  # agent -> records behind, all partitions
    pending: float
    dead_lettered: float
    expired: float
    rss_bytes: float


Samples = dict[str, list[tuple[dict[str, str], float]]]


def samples_of(families: Iterable[Metric]) -> Samples:
    """Every sample of ``families`` by sample name (``eddy_examples_learned_total``…)."""
    out: Samples = {}
    for family in families:
        for sample in family.samples:
            out.setdefault(sample.name, []).append((sample.labels, sample.value))
    return out


def read_registry(registry: CollectorRegistry) -> Samples:
    """Every sample of ``registry`` by sample name."""
    return samples_of(registry.collect())


def sum_samples(samples: Samples | None, name: str, **match: str) -> float:
    """The sum of ``name``'s samples whose labels include ``match`` (0 when absent)."""
    if not samples:
        return 0.0
    return sum(
        v
        for labels, v in samples.get(name, [])
        if all(labels.get(k) == want for k, want in match.items())
    )


class History:
    """A bounded series of :class:`Point` sampled from a registry.

    ``events`` returns the control events to show (see
    :class:`~eddy.streams.agents.followers.SeenEvent`); it is called from the HTTP
    thread, so it must return a copy.
    """

    def __init__(
        self,
        registry: CollectorRegistry,
        events: Callable[[], list[Any]] = list,
        keep: int = 3600,
    ) -> None:
        self.registry = registry
        self.events = events
        self.points: deque[Point] = deque(maxlen=keep)
        self.started = time.time()
        # t, learned, consumed, predicted, staleness sum, staleness count
        self._last: tuple[float, ...] | None = None
        self._lock = threading.Lock()

    def sample(self, now: float | None = None) -> Point:
        """Read the registry once and append a point."""
        now = time.time() if now is None else now
        s = read_registry(self.registry)
        learned = sum_samples(s, "eddy_examples_learned_total")
        consumed = sum(
            v
            for labels, v in s.get("eddy_records_consumed_total", [])
            if labels["agent"] == "worker" and labels["topic"].endswith("samples")
        )
        predicted = sum_samples(s, "eddy_predictions_total")
        stale_sum = sum_samples(s, "eddy_prediction_staleness_seconds_sum")
        stale_count = sum_samples(s, "eddy_prediction_staleness_seconds_count")
        current = (now, learned, consumed, predicted, stale_sum, stale_count)
        rates = [0.0, 0.0, 0.0]
        staleness = 0.0
        if self._last is not None and now > self._last[0]:
            dt = now - self._last[0]
            rates = [max(0.0, current[i] - self._last[i]) / dt for i in (1, 2, 3)]
            if current[5] > self._last[5]:
                staleness = (current[4] - self._last[4]) / (current[5] - self._last[5])
        self._last = current
        metric = _primary(s, "eddy_prequential_metric")
        champion = _primary(s, "eddy_champion_metric")
        lag: dict[str, float] = {}
        for labels, value in s.get("eddy_consumer_lag", []):
            lag[labels["agent"]] = lag.get(labels["agent"], 0.0) + value
        point = Point(
            t=now,
            learned_per_s=round(rates[0], 1),
            consumed_per_s=round(rates[1], 1),
            predicted_per_s=round(rates[2], 1),
            staleness_s=round(staleness, 3),
            metric=metric,
            champion=champion,
            lag=lag,
            pending=sum_samples(s, "eddy_join_pending"),
            dead_lettered=sum_samples(s, "eddy_dead_letter_total"),
            expired=sum_samples(s, "eddy_join_unmatched_state", reason="sample_expired"),
            rss_bytes=sum_samples(s, "eddy_process_resident_memory_bytes"),
        )
        with self._lock:
            self.points.append(point)
        return point

    def state(self) -> dict[str, Any]:
        """What ``/api/state`` returns: the series, the events and the current figures."""
        s = read_registry(self.registry)
        models = [
            {"stream": labels["stream"], "model": labels["model"], "version": labels["version"]}
            for labels, value in s.get("eddy_model_info", [])
            if value
        ]
        champions = {
            labels["stream"]: labels["version"]
            for labels, value in s.get("eddy_champion_info", [])
            if value
        }
        with self._lock:
            points = [asdict(p) for p in self.points]
        return {
            "started": self.started,
            "now": time.time(),
            "points": points,
            "events": [asdict(e) for e in self.events()],
            "models": models,
            "champions": champions,
            # From checkpointed state where there is one: these survive restarts.
            "totals": {
                "learned": sum_samples(s, "eddy_stream_examples"),
                "predicted": sum_samples(s, "eddy_predictions_total"),
                "feature_drifts": sum_samples(s, "eddy_feature_drift_signals_total"),
                "drifts": sum_samples(s, "eddy_drift_signals_total", level="drift"),
                "dead_lettered": sum_samples(s, "eddy_dead_letter_total"),
                "expired": sum_samples(s, "eddy_join_unmatched_state", reason="sample_expired"),
            },
        }

    async def run(self, stop: asyncio.Event, interval_s: float = 1.0) -> None:
        """Sample every ``interval_s`` until ``stop`` is set."""
        while not stop.is_set():
            self.sample()
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(stop.wait(), interval_s)


def _primary(s: Samples, name: str) -> dict[str, float]:
    """Each stream's rolling primary metric (the first of PRIMARY_METRICS it has) in
    gauge ``name``."""
    out: dict[str, float] = {}
    for metric in PRIMARY_METRICS:
        for labels, value in s.get(name, []):
            if labels["scope"] == "rolling" and labels["metric"] == metric:
                out.setdefault(labels["stream"], value)
    return out


def dashboard_page() -> bytes:
    """The page (HTML with its script inline: it must work with no network)."""
    return resources.files("eddy.streams.observe").joinpath("dashboard.html").read_bytes()


class MetricsServer:
    """``/metrics``, and with a :class:`History` the dashboard, on one port, in a thread."""

    def __init__(
        self,
        port: int,
        registry: CollectorRegistry,
        history: History | None = None,
        host: str = "127.0.0.1",
    ) -> None:
        self.registry = registry
        self.host = host
        self.history = history
        page = dashboard_page() if history is not None else None
        server = self

        class Handler(BaseHTTPRequestHandler):
            def do_GET(self) -> None:
                path = self.path.split("?", 1)[0]
                if path == "/metrics":
                    self._send(200, CONTENT_TYPE_LATEST, generate_latest(server.registry))
                elif path == "/healthz":
                    self._send(200, "text/plain", b"ok\n")
                elif path in ("/", "/index.html") and page is not None:
                    self._send(200, "text/html; charset=utf-8", page)
                elif path == "/api/state" and server.history is not None:
                    body = orjson.dumps(server.history.state())
                    self._send(200, "application/json", body)
                else:
                    self._send(404, "text/plain", b"not found: try /metrics\n")

            def _send(self, status: int, kind: str, body: bytes) -> None:
                self.send_response(status)
                self.send_header("Content-Type", kind)
                self.send_header("Content-Length", str(len(body)))
                self.send_header("Cache-Control", "no-store")
                self.end_headers()
                self.wfile.write(body)

            def log_message(self, format: str, *args: Any) -> None:
                log.debug("http: " + format, *args)

        try:
            self.httpd = ThreadingHTTPServer((host, port), Handler)
        except OSError as ex:
            msg = (
                f"cannot serve metrics on {host}:{port}: {ex.strerror}; pick another port with "
                "--metrics-port (EDDY_METRICS_PORT, 0 for none) or address with --metrics-host"
            )
            raise ConfigError(msg) from ex
        self.httpd.daemon_threads = True
        self.port = self.httpd.server_address[1]
        self._thread = threading.Thread(
            target=self.httpd.serve_forever, name="eddy-metrics-http", daemon=True
        )

    def start(self) -> MetricsServer:
        """Serve in a background thread."""
        self._thread.start()
        return self

    def stop(self) -> None:
        """Stop serving and close the port."""
        self.httpd.shutdown()
        self.httpd.server_close()
        self._thread.join(timeout=5)
