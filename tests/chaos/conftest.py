"""The chaos suite shares the integration fixtures (one embedded broker per session)."""

from tests.integration.conftest import (  # noqa: F401 - pytest fixtures
    broker,
    registry_from_kafka,
    settings,
)
