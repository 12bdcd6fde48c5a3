"""Prometheus metrics of ``eddy serve``, created against an injected registry.

Labels are bounded: ``model`` is a stream the server serves (a name from a URL that is not
one is counted as ``-``), ``version`` a registry version or an online version without its
example count (:func:`~eddy.consumers.inference.models.metric_version`), ``reason`` one of
:data:`~eddy.consumers.inference.protocol.REASONS`.
"""

from __future__ import annotations

from collections.abc import Iterator
from dataclasses import dataclass
from typing import Any

from prometheus_client import CollectorRegistry, Counter, Histogram
from prometheus_client.core import CounterMetricFamily, GaugeMetricFamily
from prometheus_client.registry import Collector

from eddy.consumers.inference.models import ModelSet

# Server-side latency of one inference request: 50 µs to 2.5 s.
_SECONDS = (5e-5, 1e-4, 2.5e-4, 5e-4, 1e-3, 2.5e-3, 5e-3, 1e-2, 2.5e-2, 5e-2, 0.1, 0.25, 1, 2.5)


@dataclass(frozen=True)
class ServeMetrics:
    """Requests, rows, latency and errors per model and version; shadow agreement."""

    requests: Counter
    rows: Counter
    latency: Histogram
    errors: Counter
    shadow: Counter

    @classmethod
    def create(cls, registry: CollectorRegistry, models: ModelSet | None = None) -> ServeMetrics:
        """Register the server's metrics.

        The metrics, registered in ``registry`` (with the live model state of ``models``
        read at scrape time).
        """
        metrics = cls(
            requests=Counter(
                "eddy_serve_requests_total",
                "Inference requests answered (200), by model and the version that answered.",
                ["model", "version"],
                registry=registry,
            ),
            rows=Counter(
                "eddy_serve_rows_total",
                "Rows predicted in answered inference requests.",
                ["model", "version"],
                registry=registry,
            ),
            latency=Histogram(
                "eddy_serve_request_seconds",
                "Time from an inference request's body read to its response built.",
                ["model", "version"],
                buckets=_SECONDS,
                registry=registry,
            ),
            errors=Counter(
                "eddy_serve_errors_total",
                "Requests refused, by model, version and reason (bad_request, features, "
                "not_ready, unauthorized, ...).",
                ["model", "version", "reason"],
                registry=registry,
            ),
            shadow=Counter(
                "eddy_serve_shadow_rows_total",
                "Rows also predicted by the stream's other model after answering: agree "
                "(same label; regression: within 10%), disagree, or error.",
                ["model", "outcome"],
                registry=registry,
            ),
        )
        if models is not None:
            registry.register(ModelsCollector(models))
        return metrics


class ModelsCollector(Collector):
    """What each stream holds now, read from the clients at scrape time."""

    def __init__(self, models: ModelSet) -> None:
        self.models = models

    def collect(self) -> Iterator[Any]:
        """``eddy_serve_model_info`` (1 per loaded model) and ``eddy_serve_swaps_total``."""
        info = GaugeMetricFamily(
            "eddy_serve_model_info",
            "1 for each model a stream holds (kind online or champion) and its version.",
            labels=["model", "kind", "version"],
        )
        swaps = CounterMetricFamily(
            "eddy_serve_swaps",
            "Models loaded (hot swaps) per stream and kind since the server started.",
            labels=["model", "kind"],
        )
        ready = GaugeMetricFamily(
            "eddy_serve_ready", "1 once the server has read the registry, else 0."
        )
        ready.add_metric([], 1.0 if self.models.synced else 0.0)
        for name, client in list(self.models.clients.items()):
            for kind, version in client.held().items():
                info.add_metric([name, kind, version.partition("@")[0]], 1.0)
            for kind in ("online", "champion"):
                n = sum(1 for k, _, _ in client.swaps if k == kind)
                swaps.add_metric([name, kind], float(n))
        yield info
        yield swaps
        yield ready
