"""Session-wide test setup: one random wire key in the environment, as a deployment has one.

The relay (RelayServer builds its RelayLink from the environment) and any InferenceServer or
RelayLink made without ``key=`` read SPLITRELAY_WIRE_KEY; a test process without it would fail to
start either end, by design (there is no unauthenticated mode). Tests that need a particular key,
or none, pass ``key=`` or change the environment with monkeypatch.
"""

from __future__ import annotations

import os
from collections.abc import Iterator
from pathlib import Path

import pytest

from splitrelay.inference.wire_auth import WIRE_KEY_ENV, generate_text

os.environ[WIRE_KEY_ENV] = generate_text()  # random per test run; never printed

TESTS = Path(__file__).resolve().parent
REALTIME_TIERS = ("integration", "e2e")
"""The tiers that run in real time (WebRTC, stacks of processes, tiny benchmark runs): `make test` runs
them in a pass of their own after the others, so they share the machine only with each other."""


@pytest.hookimpl(tryfirst=True)  # before ``-m`` deselects by marker
def pytest_collection_modifyitems(items: list[pytest.Item]) -> None:
    """Every test in tests/integration and tests/e2e carries its tier's marker, whether or not its module
    sets it: the Makefile's test target selects the real-time pass with ``-m "integration or e2e"``."""
    for item in items:
        path = item.path.resolve()
        if path.is_relative_to(TESTS) and (tier := path.relative_to(TESTS).parts[0]) in REALTIME_TIERS:
            item.add_marker(tier)


@pytest.fixture(autouse=True)
def _native_decision_forgotten() -> Iterator[None]:
    """The native path's load decision is cached per process; a test that forced the Python path
    (``SPLITRELAY_NATIVE=0``, undone by monkeypatch) must not leave it decided for the tests after it."""
    yield
    from splitrelay.relay.media import native

    native.reset()
