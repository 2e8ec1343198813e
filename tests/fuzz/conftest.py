"""The fuzz tier (tests/fuzz): its marker, registered here because pyproject.toml's list is owned elsewhere.

``pytest -m fuzz`` runs only this tier; ``pytest -m "not fuzz"`` skips it. The default run includes it at a
small budget per target (tests/fuzz/engine.py: CI_EXAMPLES); ``SPLITRELAY_FUZZ_EXAMPLES`` raises it.
"""

from __future__ import annotations

import pytest


def pytest_configure(config: pytest.Config) -> None:
    config.addinivalue_line(
        "markers",
        "fuzz: the standing fuzz tier (SPLITRELAY_FUZZ_EXAMPLES inputs per target; splitrelay fuzz)",
    )
