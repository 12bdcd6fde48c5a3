"""Observability: Prometheus metrics of every process and the worker's live dashboard."""
