"""Shared test configuration: anyio backends and the storage fixtures plugin."""

from __future__ import annotations

import os

import pytest

os.environ.setdefault("NO_PROXY", "127.0.0.1,localhost")

pytest_plugins = ["tests.fixtures.storage"]

BOTH_BACKENDS = pytest.mark.parametrize("anyio_backend", ["asyncio", "trio"])


@pytest.fixture
def anyio_backend() -> str:
    """Production runs on asyncio; modules that must also run on trio parametrize this."""
    return "asyncio"
