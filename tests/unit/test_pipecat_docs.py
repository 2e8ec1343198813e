"""docs/agents.md shows the Pipecat example the end-to-end test runs, byte for byte: the docs cannot rot."""

from __future__ import annotations

import re
from pathlib import Path

REPO = Path(__file__).resolve().parents[2]
MARKER = "<!-- example: scripts/integrations/pipecat_parrot.py -->"


def test_the_documented_example_is_the_shipped_module() -> None:
    doc = (REPO / "docs" / "agents.md").read_text()
    assert doc.count(MARKER) == 1
    after = doc.split(MARKER, 1)[1]
    match = re.match(r"\n```python\n(.*?)```\n", after, re.DOTALL)
    assert match, "the marker must be followed by a python code block"
    shipped = (REPO / "scripts" / "integrations" / "pipecat_parrot.py").read_text()
    assert match.group(1) == shipped


def test_the_example_is_a_module_with_a_factory() -> None:
    from splitrelay.integrations import pipecat_parrot

    assert callable(pipecat_parrot.factory)
    doc = (REPO / "docs" / "agents.md").read_text()
    assert "splitrelay agent pipecat splitrelay.integrations.pipecat_parrot:factory" in doc
