"""Prometheus metrics of the streaming side, created against an injected registry.

Names follow Prometheus conventions: prefix ``eddy_``, base units, ``_total`` for
counters, and label sets bounded by eddy's own topic kinds and reason codes (never
event ids or free text).
"""

from __future__ import annotations

from dataclasses import dataclass

from prometheus_client import REGISTRY, CollectorRegistry, Counter


@dataclass(frozen=True)
class EdgeMetrics:
    """Counters of what the edge decoders accept and dead-letter."""

    decoded: Counter
    dead_lettered: Counter

    @classmethod
    def create(cls, registry: CollectorRegistry = REGISTRY) -> EdgeMetrics:
        """Register the counters in ``registry`` (pass a fresh one in tests)."""
        return cls(
            decoded=Counter(
                "eddy_events_decoded",
                "Events that passed decoding and schema validation.",
                ["topic"],
                registry=registry,
            ),
            dead_lettered=Counter(
                "eddy_dead_letter",
                "Events sent to the dead-letter topic, by source topic kind and reason.",
                ["topic", "reason"],
                registry=registry,
            ),
        )
