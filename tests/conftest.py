"""Session-wide test setup: one random wire key in the environment, as a deployment has one.

The relay (RelayServer builds its RelayLink from the environment) and any InferenceServer or
RelayLink made without ``key=`` read SPLITRELAY_WIRE_KEY; a test process without it would fail to
start either end, by design (there is no unauthenticated mode). Tests that need a particular key,
or none, pass ``key=`` or change the environment with monkeypatch.
"""

from __future__ import annotations

import os
from collections.abc import Iterator

import pytest

from splitrelay.inference.wire_auth import WIRE_KEY_ENV, generate_text

os.environ[WIRE_KEY_ENV] = generate_text()  # random per test run; never printed


@pytest.fixture(autouse=True)
def _native_decision_forgotten() -> Iterator[None]:
    """The native path's load decision is cached per process; a test that forced the Python path
    (``SPLITRELAY_NATIVE=0``, undone by monkeypatch) must not leave it decided for the tests after it."""
    yield
    from splitrelay.relay.media import native

    native.reset()
