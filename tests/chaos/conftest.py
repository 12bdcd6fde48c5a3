"""The chaos suite shares the integration fixtures (one embedded broker per session)."""

from tests.integration.conftest import broker, settings  # noqa: F401 - pytest fixtures
