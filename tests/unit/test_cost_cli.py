"""`splitrelay cost` end to end through typer's CliRunner: table, JSON, CSV, plot, bad input."""

from __future__ import annotations

import csv
import io
import json
import xml.etree.ElementTree as ET
from pathlib import Path

import pytest
from PIL import Image
from typer.testing import CliRunner

from splitrelay.cli.cost import cost_app
from splitrelay.cost.custom import MEASURED_CALLS_PER_CORE
from splitrelay.cost.errors import CostInputError
from splitrelay.cost.files import Output, write_atomic

runner = CliRunner()


def test_default_report_through_the_splitrelay_command() -> None:
    from splitrelay.cli.main import app

    result = runner.invoke(app, ["cost"])
    assert result.exit_code == 0, result.output
    out = result.stdout
    assert "Monthly cost (USD) at 1M call-minutes a month" in out
    assert "<- cheapest" in out
    assert "Break-even against the custom edge" in out
    assert "LiveKit Cloud: custom edge cheaper above 381k min" in out
    assert "Scale" in out  # the plan LiveKit is priced on at 1M
    assert "Hosted realtime API (OpenAI): never: hosted is cheaper" in out
    flat_out = " ".join(out.split())
    assert "Assumptions:" in out and f"{MEASURED_CALLS_PER_CORE:g} calls/core" in flat_out
    assert "not measured on Graviton" in flat_out


def test_json_report() -> None:
    result = runner.invoke(cost_app, ["--minutes", "250k", "--json"])
    assert result.exit_code == 0, result.output
    data = json.loads(result.stdout)
    assert data["traffic"]["minutes"] == 250_000
    volume = data["at_volume"]
    assert [o["name"] for o in volume["options"]] == ["custom", "livekit", "realtimekit", "realtime-api"]
    # LiveKit Ship: $50 + (500k - 150k) x $0.0005, 195 GB < 250 included = $225 < RealtimeKit's $250.
    assert volume["cheapest"] == "livekit"
    for option in volume["options"]:
        assert option["monthly_usd"] == pytest.approx(sum(i["usd"] for i in option["line_items"]))
        assert option["cheapest"] == (option["name"] == "livekit")
    livekit = next(o for o in volume["options"] if o["name"] == "livekit")
    assert (livekit["plan"], livekit["contract_required"], livekit["monthly_usd"]) == ("Ship", False, 225)
    assert data["contains"] == "transport"
    assert [row["minutes"] for row in data["sweep"]][:3] == [1e4, 3e4, 1e5]
    by_hosted = {b["hosted"]: b for b in data["break_even"]}
    assert by_hosted["realtimekit"]["crossings"][0]["minutes"] == pytest.approx(360_358, abs=6)
    assert by_hosted["realtime-api"]["never"].startswith("hosted is cheaper")
    assert data["prices"]["cloudflare.realtime.egress_per_gb"]["source"].startswith("https://")
    assert data["fleet"]["calls_per_core"] is None  # the catalogue's figure for the architecture
    assert data["prices"]["relay.calls_per_core.arm"]["assumption"] is True


def test_csv_file_matches_json(tmp_path: Path) -> None:
    path = tmp_path / "costs.csv"
    result = runner.invoke(cost_app, ["--csv", str(path)])
    assert result.exit_code == 0, result.output
    assert f"wrote {path}" in result.output
    rows = list(csv.DictReader(path.open()))
    assert len(rows) == (1 + 11) * 4
    at_volume = {r["option"]: r for r in rows if r["section"] == "at_volume"}
    assert at_volume["custom"]["monthly_usd"] == "404.59"
    assert at_volume["custom"]["cheapest"] == "true"
    assert at_volume["livekit"]["monthly_usd"] == "700.00"
    assert (at_volume["livekit"]["plan"], at_volume["custom"]["plan"]) == ("Scale", "")
    billion = {r["option"]: r for r in rows if r["section"] == "sweep" and r["minutes"] == "1000000000"}
    assert billion["realtimekit"]["monthly_usd"] == "1000000.00"
    assert billion["realtimekit"]["per_1000_minutes_usd"] == "1.0000"


def test_csv_to_stdout() -> None:
    result = runner.invoke(cost_app, ["--csv", "-", "--options", "custom,realtimekit", "-m", "1e7"])
    assert result.exit_code == 0, result.output
    rows = list(csv.DictReader(io.StringIO(result.stdout)))
    assert {r["option"] for r in rows} == {"custom", "realtimekit"}


@pytest.mark.parametrize("suffix", ["png", "svg"])
def test_plot_is_a_valid_image(tmp_path: Path, suffix: str) -> None:
    path = tmp_path / f"costs.{suffix}"
    result = runner.invoke(cost_app, ["--plot", str(path), "--generic-rate", "0.00006"])
    assert result.exit_code == 0, result.output
    if suffix == "png":
        with Image.open(path) as image:
            assert image.format == "PNG"
            assert image.size[0] > 600 and image.size[1] > 400
            image.verify()
    else:
        root = ET.parse(path).getroot()
        assert root.tag == "{http://www.w3.org/2000/svg}svg"
        text = "".join(root.itertext())
        assert "call-minutes per month" in text and "Generic per-minute edge" in text
    assert [p.name for p in tmp_path.iterdir()] == [path.name]  # no temporary file left


def test_overrides_change_the_numbers(tmp_path: Path) -> None:
    prices = tmp_path / "mine.toml"
    prices.write_text(
        '[cloudflare.realtimekit.audio_participant_minute]\nvalue = 0.001\nunit = "USD/participant-minute"\n'
    )
    result = runner.invoke(
        cost_app,
        [
            "--json",
            "--prices",
            str(prices),
            "--price",
            "livekit.plans.scale.month=600",
            "--instance-type",
            "c8g.large",
            "--instance-price",
            "0.2",
            "--options",
            "custom,livekit,realtimekit",
        ],
    )
    assert result.exit_code == 0, result.output
    options = {o["name"]: o for o in json.loads(result.stdout)["at_volume"]["options"]}
    assert options["realtimekit"]["monthly_usd"] == pytest.approx(2_000)
    assert options["livekit"]["monthly_usd"] == pytest.approx(800)  # Scale: $600 + $200 (Ship $1,038.60)
    fleet = next(i for i in options["custom"]["line_items"] if i["label"] == "Relay fleet")
    assert fleet["usd"] == pytest.approx(4 * 730 * 0.2)


BAD_INPUTS = [
    (["--minutes", "-5"], "--minutes: must be in (0, 1e12]"),
    (["--minutes", "0"], "--minutes: must be in (0, 1e12]"),
    (["--minutes", "lots"], "--minutes: must be a number of call-minutes per month in (0, 1e12]"),
    (["--options", "custom,zoom"], "--options: unknown option 'zoom'; allowed: all, custom, livekit"),
    (["--busy-hour-share", "1.5"], "--busy-hour-share: must be in (0, 1], got 1.5"),
    (["--busy-hour-share", "0"], "--busy-hour-share: must be in (0, 1], got 0"),
    (
        ["--price", "livekit.plans.ship.connection_minute=0.0005x"],
        "--price livekit.plans.ship.connection_minute: value must be a number",
    ),
    (["--instance-type", "c8g.large"], "--instance-type: no price for 'c8g.large'"),
    (["--options", "generic"], "--generic-rate: is required for option 'generic'"),
    (["--csv", "-", "--json"], "--csv: '-' (stdout) cannot be combined with --json"),
]


@pytest.mark.parametrize(("args", "message"), BAD_INPUTS)
def test_bad_input_is_one_line_and_writes_nothing(tmp_path: Path, args: list[str], message: str) -> None:
    outputs = ["--csv", str(tmp_path / "c.csv"), "--plot", str(tmp_path / "p.png")]
    result = runner.invoke(cost_app, args + ([] if "--csv" in args else outputs))
    assert result.exit_code == 2
    assert result.stderr.startswith(f"error: {message}")
    assert result.stderr.count("\n") == 1
    assert result.stdout == ""
    assert list(tmp_path.iterdir()) == []


@pytest.mark.parametrize(
    ("text", "message"),
    [
        (
            "[livekit.plans.ship.connection_minute]\nvalue = 0.0004\n",
            "mine.toml: livekit.plans.ship.connection_minute.unit: is missing (required: a non-empty string)",
        ),
        (
            '[livekit.plans.ship.connection_minute]\nvalue = "4e-4!"\nunit = "USD/connection-minute"\n',
            "mine.toml: livekit.plans.ship.connection_minute.value: must be a number >= 0, got '4e-4!'",
        ),
    ],
)
def test_bad_price_file_writes_nothing(tmp_path: Path, text: str, message: str) -> None:
    prices = tmp_path / "mine.toml"
    prices.write_text(text)
    csv_path, plot_path = tmp_path / "c.csv", tmp_path / "p.svg"
    result = runner.invoke(
        cost_app, ["--prices", str(prices), "--csv", str(csv_path), "--plot", str(plot_path)]
    )
    assert result.exit_code == 2
    assert result.stderr == f"error: {message}\n"
    assert not csv_path.exists() and not plot_path.exists()


def test_unwritable_plot_leaves_no_csv(tmp_path: Path) -> None:
    csv_path = tmp_path / "c.csv"
    result = runner.invoke(cost_app, ["--csv", str(csv_path), "--plot", str(tmp_path / "missing" / "p.png")])
    assert result.exit_code == 2
    assert result.stderr.startswith("error: --plot: directory")
    assert list(tmp_path.iterdir()) == []


def test_plot_suffix_is_checked_before_work(tmp_path: Path) -> None:
    result = runner.invoke(cost_app, ["--plot", str(tmp_path / "p.jpg")])
    assert result.exit_code == 2
    assert result.stderr == "error: --plot: file name must end in .png or .svg, got 'p.jpg'\n"


def test_atomic_write_is_all_or_nothing(tmp_path: Path) -> None:
    good = Output("--csv", tmp_path / "a.csv", b"a,b\n")
    bad = Output("--plot", tmp_path / "gone" / "b.png", b"png")
    with pytest.raises(CostInputError) as caught:
        write_atomic([good, bad])
    assert caught.value.field == "--plot"
    assert list(tmp_path.iterdir()) == []
    write_atomic([good])
    assert good.path.read_bytes() == b"a,b\n"
    assert [p.name for p in tmp_path.iterdir()] == ["a.csv"]


def test_table_names_step_crossings_and_marks_bundled_transport() -> None:
    # The relay's calls per core is given, so the crossings do not move with the measured figure.
    args = ["--generic-rate", "0.00006", "--generic-name", "Bandwidth-priced edge", "--calls-per-core", "400"]
    result = runner.invoke(cost_app, args)
    assert result.exit_code == 0, result.output
    out = " ".join(result.stdout.split())  # undo the table's line wrapping
    assert "Bandwidth-priced edge: custom edge cheaper above 420M min" in out
    assert (
        "custom edge dearer above 428M min, where it adds a relay instance ($51,417 against $51,392)" in out
    )
    assert "(OpenAI) *" in out and "so it is never marked cheapest" in out
