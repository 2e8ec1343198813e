"""`splitrelay fuzz` (scripts/devtools/fuzz.py): a long run of one target via the command; refusals."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from splitrelay.devtools import fuzz

pytestmark = pytest.mark.fuzz


def test_a_long_run_of_one_target_writes_its_report(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    fuzz.fuzz(target="wire", inputs=fuzz.LONG_RUN_FROM, seed=7, report_dir=tmp_path)
    report = json.loads((tmp_path / "wire.json").read_text())
    assert report["inputs"] == fuzz.LONG_RUN_FROM and report["seed"] == 7 and report["failures"] == []
    assert report["inputs_per_s"] > 0
    assert "wire" in capsys.readouterr().out


@pytest.mark.parametrize(
    ("kwargs", "message"),
    [({"target": "nope"}, "unknown target 'nope'"), ({"inputs": 10}, "at least 5000")],
)
def test_it_refuses_an_unknown_target_or_a_bounded_budget(kwargs: dict[str, object], message: str) -> None:
    with pytest.raises(SystemExit, match=message):
        fuzz.fuzz(**kwargs)  # type: ignore[arg-type]


def test_every_target_names_a_test_that_exists() -> None:
    for node in fuzz.TARGETS.values():
        module, _, test = node.partition("::")
        assert f"def {test}(" in (fuzz.REPO / "tests" / "fuzz" / module).read_text(), node
