"""Shared test configuration: hypothesis profiles."""

import os

from hypothesis import HealthCheck, settings

settings.register_profile(
    "ci", max_examples=300, deadline=None, suppress_health_check=[HealthCheck.too_slow]
)
settings.register_profile("dev", max_examples=100, deadline=None)
settings.load_profile("ci" if os.environ.get("CI") else "dev")


def pytest_collection_modifyitems(config, items):
    """Mark tests/integration as ``integration``, tests/chaos as ``chaos`` (and integration)."""
    import pytest

    for item in items:
        path = str(item.fspath)
        if "/integration/" in path or "/chaos/" in path:
            item.add_marker(pytest.mark.integration)
        if "/chaos/" in path:
            item.add_marker(pytest.mark.chaos)
