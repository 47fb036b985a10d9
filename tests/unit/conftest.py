"""Fixtures the gateway's unit tests share."""

from __future__ import annotations

from collections.abc import AsyncIterator

import pytest
from fake_openai import StartUpstream, fake_upstreams


@pytest.fixture
async def upstream() -> AsyncIterator[StartUpstream]:
    """``fake, up = await upstream("r1", mode="drop")``: started now, closed after the test."""
    async with fake_upstreams() as start:
        yield start
