"""The price catalogue: every figure sourced and dated, overrides checked field by field."""

from __future__ import annotations

from datetime import date
from pathlib import Path

import pytest

from splitrelay.cost.catalogue import (
    INSTANCE_PREFIX,
    MEASURED_PREFIX,
    Price,
    PriceBook,
    dump_prices,
    instance_price_flag,
    load_catalogue,
    load_price_file,
    parse_price_flag,
    parse_prices,
)
from splitrelay.cost.errors import CostInputError


@pytest.fixture(scope="module")
def book() -> PriceBook:
    return load_catalogue()


def test_every_catalogue_entry_has_unit_source_and_date(book: PriceBook) -> None:
    assert len(book) >= 40
    for key, price in book.items():
        assert price.unit, key
        # A figure not read at its source is marked unverified and carries no check date.
        assert (price.as_of is None) == price.unverified, key
        assert price.as_of is None or price.as_of <= date(2026, 12, 31), key
        if price.assumption:
            assert price.source.startswith("assumption"), key
        else:
            assert price.source.startswith("https://") or price.measured, key


def test_catalogue_marks_unsourced_figures_as_assumptions(book: PriceBook) -> None:
    marked = {p.key for p in book.assumptions()}
    assert "cloudflare.workers.requests_per_call" in marked
    assert "relay.calls_per_core.arm" in marked  # not measured on Graviton
    unverified = {p.key for p in book.unverified()}
    assert "livekit.plans.scale.included_connection_minutes" in unverified
    assert book["livekit.plans.scale.month"].as_of is None  # no check date that did not happen
    assert "cloudflare.realtime.egress_per_gb" not in marked
    assert book["cloudflare.realtime.egress_per_gb"].value == 0.05
    assert book["cloudflare.realtime.egress_per_gb"].unit == "USD/GB"


def test_user_file_overrides_a_subset_and_records_its_origin(tmp_path: Path, book: PriceBook) -> None:
    path = tmp_path / "mine.toml"
    path.write_text(
        '[livekit.plans.ship.connection_minute]\nvalue = 0.0004\nunit = "USD/connection-minute"\n'
        '[aws.ec2.instance_hour."c8g.large"]\nvalue = 0.08\nunit = "USD/hour"\nas_of = 2026-11-01\n'
    )
    new = book.with_overrides(load_price_file(path), label=path.name)
    assert new.value("livekit.plans.ship.connection_minute") == 0.0004
    assert new["livekit.plans.ship.connection_minute"].origin == "file mine.toml"
    assert new["livekit.plans.ship.connection_minute"].source == "price file mine.toml"
    assert new.instance_hour("c8g.large").value == 0.08
    assert new.value("livekit.plans.ship.downstream_per_gb") == book.value(
        "livekit.plans.ship.downstream_per_gb"
    )
    assert book.value("livekit.plans.ship.connection_minute") == 0.0005  # the original book is unchanged


@pytest.mark.parametrize(
    ("text", "field", "says"),
    [
        (
            "[livekit.plans.ship.connection_minute]\nvalue = 0.0004\n",
            "bad.toml: livekit.plans.ship.connection_minute.unit",
            "missing",
        ),
        (
            '[livekit.plans.ship.connection_minute]\nvalue = "0.0004x"\nunit = "USD/connection-minute"\n',
            "bad.toml: livekit.plans.ship.connection_minute.value",
            "must be a number >= 0, got '0.0004x'",
        ),
        (
            '[livekit.plans.ship.connection_minute]\nvalue = true\nunit = "USD/connection-minute"\n',
            "bad.toml: livekit.plans.ship.connection_minute.value",
            "must be a number",
        ),
        (
            '[livekit.plans.ship.connection_minute]\nvalue = -1\nunit = "USD/connection-minute"\n',
            "bad.toml: livekit.plans.ship.connection_minute.value",
            ">= 0",
        ),
        (
            '[livekit.plans.ship.connection_minute]\nvalue = nan\nunit = "USD/connection-minute"\n',
            "bad.toml: livekit.plans.ship.connection_minute.value",
            "finite",
        ),
        (
            '[livekit.plans.ship.connection_minute]\nvalue = 1\nunit = "USD/connection-minute"\nmax = 3\n',
            "bad.toml: livekit.plans.ship.connection_minute.max",
            "unknown field",
        ),
        (
            '[livekit.plans.ship.connection_minute]\nvalue = 1\nunit = "USD/connection-minute"\n'
            'as_of = "last week"\n',
            "bad.toml: livekit.plans.ship.connection_minute.as_of",
            "YYYY-MM-DD",
        ),
        ("[livekit]\nconnection_minute = 3\n", "bad.toml: livekit.connection_minute", "expected a table"),
        ("[livekit.plans.ship.connection_minute\nvalue = 1\n", "bad.toml", "not valid TOML"),
    ],
)
def test_bad_price_file_names_the_field(tmp_path: Path, text: str, field: str, says: str) -> None:
    path = tmp_path / "bad.toml"
    path.write_text(text)
    with pytest.raises(CostInputError) as caught:
        load_price_file(path)
    assert caught.value.field == field
    assert says in caught.value.message
    assert "\n" not in str(caught.value)


@pytest.mark.parametrize(
    ("text", "field", "says"),
    [
        (
            '[livekit.plans.ship.connection_minute]\nvalue = 1\nunit = "USD/minute"\n',
            ".unit",
            "must be 'USD/connection-minute'",
        ),
        (
            '[livekit.plans.ship.conection_minute]\nvalue = 1\nunit = "USD/minute"\n',
            "",
            "did you mean 'livekit.plans.ship.connection_minute'",
        ),
        ('[openai.realtime.caller_talk_share]\nvalue = 1.5\nunit = "fraction of call"\n', ".value", "[0, 1]"),
        ('[aws.ec2.instance_hour."Big Box"]\nvalue = 1\nunit = "USD/hour"\n', "", "instance type"),
    ],
)
def test_override_must_fit_the_catalogue(
    tmp_path: Path, book: PriceBook, text: str, field: str, says: str
) -> None:
    path = tmp_path / "bad.toml"
    path.write_text(text)
    with pytest.raises(CostInputError) as caught:
        book.with_overrides(load_price_file(path), label=path.name)
    assert caught.value.field.startswith("bad.toml: ")
    assert caught.value.field.endswith(field)
    assert says in caught.value.message


def test_missing_price_file_is_a_clear_error(tmp_path: Path) -> None:
    with pytest.raises(CostInputError, match="cannot read"):
        load_price_file(tmp_path / "nope.toml")


def test_price_flag_takes_the_catalogue_unit(book: PriceBook) -> None:
    price = parse_price_flag("cloudflare.realtime.egress_per_gb=0.04", book)
    assert (price.key, price.value, price.unit, price.origin) == (
        "cloudflare.realtime.egress_per_gb",
        0.04,
        "USD/GB",
        "--price",
    )
    new_type = parse_price_flag(INSTANCE_PREFIX + "c8g.xlarge=0.15", book)
    assert new_type.path[-1] == "c8g.xlarge" and new_type.unit == "USD/hour"


@pytest.mark.parametrize(
    ("flag", "says"),
    [
        ("cloudflare.realtime.egress_per_gb", "expected KEY=VALUE"),
        ("cloudflare.realtime.egress_per_gb=abc", "must be a number"),
        ("cloudflare.realtime.egress_per_gb=-1", ">= 0"),
        ("cloudflare.realtime.egres_per_gb=1", "did you mean"),
    ],
)
def test_bad_price_flag(book: PriceBook, flag: str, says: str) -> None:
    with pytest.raises(CostInputError, match=says):
        parse_price_flag(flag, book)


def test_unpriced_instance_type_lists_the_known_ones(book: PriceBook) -> None:
    with pytest.raises(CostInputError) as caught:
        book.instance_hour("c8g.large")
    assert caught.value.field == "--instance-type"
    assert "m7g.large" in caught.value.message
    priced = book.with_overrides([instance_price_flag("c8g.large", 0.07)], label="--instance-price")
    assert priced.instance_hour("c8g.large").value == 0.07


def test_dumped_prices_read_back_unchanged(book: PriceBook) -> None:
    chosen = [
        book["aws.ec2.instance_hour.m7g.large"],
        book["livekit.plans.ship.month"],
        book["aws.egress.tier1_per_gb"],
    ]
    text = dump_prices(chosen, "a header\nover two lines")
    assert text.startswith("# a header\n# over two lines\n")
    back = parse_prices(text, label="x.toml", strict=False)
    assert [(p.path, p.value, p.unit, p.source, p.as_of, p.note) for p in back] == [
        (p.path, p.value, p.unit, p.source, p.as_of, p.note) for p in sorted(chosen, key=lambda p: p.path)
    ]


def _strict(source: str, assumption: bool = False) -> list[Price]:
    flag = "\nassumption = true" if assumption else ""
    text = f'[relay.x]\nvalue = 1\nunit = "calls/core"\nsource = "{source}"\nas_of = 2026-12-06{flag}\n'
    return parse_prices(text, label="prices.toml", strict=True)


def test_a_measured_figure_names_its_command_and_is_no_assumption() -> None:
    """The catalogue takes three kinds of source: a URL, an assumption, or ``measured: <command>`` (a
    figure this kit measured itself); a measured figure marked as an assumption is refused."""
    (price,) = _strict(MEASURED_PREFIX + "splitrelay bench relay --calls 300")
    assert price.measured and not price.assumption
    assert not _strict("https://example.com/prices")[0].measured
    with pytest.raises(CostInputError, match="must be an https:// URL, or 'measured: ' and the command"):
        _strict("my own notes")
    with pytest.raises(CostInputError, match="a measured figure is not an assumption"):
        _strict(MEASURED_PREFIX + "splitrelay bench relay", assumption=True)
