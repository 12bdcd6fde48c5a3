"""Event consumers outside the hot path: retrainer, exporter and the hot-swap client."""
