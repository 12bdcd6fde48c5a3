"""JSON Schema (2020-12) files for every eddy event: the single source of truth for the wire format.

This package holds no code; it exists so that the schemas ship inside the
distribution and load with ``importlib.resources``.
"""
