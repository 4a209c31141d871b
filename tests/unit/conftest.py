"""Fixtures of the unit tests: ``mocked`` (aioresponses for the clients' tests)."""

from tests.mocked_http import mocked  # noqa: F401 - a fixture, registered by import
