"""The event loop Pulumi's mocks need, for every test module that runs a Pulumi program in process."""

from __future__ import annotations

import asyncio
from collections.abc import Iterator

import pytest


@pytest.fixture(autouse=True)
def event_loop_for_pulumi() -> Iterator[None]:
    """Pulumi's mocks run on `asyncio.get_event_loop()`: a loop of this test's own, not whatever the test
    before it on this process left set, or none (an earlier async test leaves none current)."""
    loop = asyncio.new_event_loop()
    asyncio.set_event_loop(loop)
    try:
        yield
    finally:
        asyncio.set_event_loop(None)
        loop.close()
