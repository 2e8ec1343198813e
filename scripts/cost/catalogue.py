"""The price catalogue: sourced figures from `prices.toml`, overridden by user files and flags.

Every figure keeps its unit, source and as-of date next to its value, so a report can always say
where a number came from, and an override with the wrong unit is refused instead of silently mixing
USD/GB with USD/TB.
"""

from __future__ import annotations

import difflib
import json
import math
import re
import tomllib
from collections.abc import Iterable, Iterator, Mapping
from dataclasses import dataclass, replace
from datetime import date, datetime
from importlib import resources
from pathlib import Path
from typing import Any

from splitrelay.cost.errors import CostInputError, check_range, number

INSTANCE_PREFIX = "aws.ec2.instance_hour."
"""Keys under this prefix price one EC2 instance type each; user files may add new types."""

INSTANCE_UNIT = "USD/hour"
_INSTANCE_TYPE = re.compile(r"[a-z][a-z0-9-]*\.[a-z0-9]+")
_LEAF_FIELDS = frozenset({"value", "unit", "source", "as_of", "assumption", "unverified", "note", "max"})
MEASURED_PREFIX = "measured: "
"""The source of a figure this kit measured itself: the prefix, then the command that measured it (and
its commit, date and conditions), so anyone can rerun it. Neither a published price nor an assumption."""
_BARE_KEY = re.compile(r"[A-Za-z0-9_-]+")


@dataclass(frozen=True)
class Price:
    """One catalogue figure and where it came from."""

    path: tuple[str, ...]
    value: float
    unit: str
    source: str
    as_of: date | None
    assumption: bool = False
    note: str = ""
    origin: str = "catalogue"
    maximum: float | None = None
    unverified: bool = False
    """A published figure we could not read at its source: it has a URL but no as-of date."""

    @property
    def key(self) -> str:
        return ".".join(self.path)

    @property
    def measured(self) -> bool:
        """Measured by this kit (``MEASURED_PREFIX``), not read at a published source."""
        return self.source.startswith(MEASURED_PREFIX)

    def as_dict(self) -> dict[str, Any]:
        return {
            "value": self.value,
            "unit": self.unit,
            "source": self.source,
            "as_of": self.as_of.isoformat() if self.as_of else None,
            "assumption": self.assumption,
            "unverified": self.unverified,
            "note": self.note,
            "origin": self.origin,
        }


class PriceBook(Mapping[str, Price]):
    """Prices by key; immutable, overrides return a new book."""

    def __init__(self, entries: Mapping[str, Price]) -> None:
        self._entries = dict(entries)

    def __getitem__(self, key: str) -> Price:
        return self._entries[key]

    def __iter__(self) -> Iterator[str]:
        return iter(self._entries)

    def __len__(self) -> int:
        return len(self._entries)

    def value(self, key: str) -> float:
        return self._entries[key].value

    def instance_hour(self, instance_type: str) -> Price:
        """The hourly price of an EC2 instance type, or an error naming the known types."""
        price = self._entries.get(INSTANCE_PREFIX + instance_type)
        if price is None:
            known = ", ".join(
                sorted(k[len(INSTANCE_PREFIX) :] for k in self if k.startswith(INSTANCE_PREFIX))
            )
            raise CostInputError(
                "--instance-type",
                f"no price for {instance_type!r} (known: {known}); pass --instance-price USD/hour "
                "or run `splitrelay cost refresh-prices aws --instance-type TYPE`",
            )
        return price

    def with_overrides(self, overrides: Iterable[Price], label: str) -> PriceBook:
        """A new book with `overrides` applied; each must name a known key (or a new instance
        type) and keep the catalogue's unit and limits."""
        entries = dict(self._entries)
        for new in overrides:
            old = entries.get(new.key)
            if old is None and new.key.startswith(INSTANCE_PREFIX):
                check_instance_type(new.key[len(INSTANCE_PREFIX) :], f"{label}: {new.key}")
            elif old is None:
                hint = difflib.get_close_matches(new.key, list(entries), n=1)
                suggestion = f"; did you mean {hint[0]!r}?" if hint else ""
                raise CostInputError(f"{label}: {new.key}", f"unknown price key{suggestion}")
            want_unit = old.unit if old else INSTANCE_UNIT
            if new.unit != want_unit:
                raise CostInputError(
                    f"{label}: {new.key}.unit",
                    f"must be {want_unit!r} (the catalogue's unit), got {new.unit!r}",
                )
            maximum = old.maximum if old else None
            _check_maximum(new.value, maximum, f"{label}: {new.key}.value")
            entries[new.key] = replace(new, maximum=maximum)
        return PriceBook(entries)

    def assumptions(self) -> list[Price]:
        return [p for p in self._entries.values() if p.assumption]

    def unverified(self) -> list[Price]:
        return [p for p in self._entries.values() if p.unverified]

    def under(self, prefix: str) -> dict[str, Price]:
        """Entries whose key starts with `prefix`, keyed by the rest (plans read their fields so)."""
        return {k[len(prefix) :]: p for k, p in self._entries.items() if k.startswith(prefix)}


def check_instance_type(instance_type: str, field: str = "--instance-type") -> str:
    """EC2 instance type names look like m7g.large; anything else cannot have a price."""
    if not _INSTANCE_TYPE.fullmatch(instance_type):
        raise CostInputError(field, f"must be an EC2 instance type such as m7g.large, got {instance_type!r}")
    return instance_type


def load_catalogue() -> PriceBook:
    """The catalogue shipped with the package (strict: every entry sourced and dated)."""
    text = resources.files("splitrelay.cost").joinpath("prices.toml").read_text(encoding="utf-8")
    return PriceBook({p.key: p for p in parse_prices(text, label="prices.toml", strict=True)})


def load_price_file(path: Path) -> list[Price]:
    """Entries of a user price file (same format as the catalogue; `value` and `unit` required)."""
    try:
        text = path.read_text(encoding="utf-8")
    except OSError as exc:
        raise CostInputError("--prices", f"cannot read {str(path)!r}: {exc.strerror or exc}") from exc
    except UnicodeDecodeError as exc:
        raise CostInputError("--prices", f"{str(path)!r} is not UTF-8 text") from exc
    return parse_prices(text, label=path.name, strict=False)


def parse_prices(text: str, label: str, strict: bool) -> list[Price]:
    """Parse a price file. `strict` (the catalogue) also requires source and as_of everywhere,
    and a URL (or ``MEASURED_PREFIX`` and the command) as the source of anything not an assumption."""
    try:
        data = tomllib.loads(text)
    except tomllib.TOMLDecodeError as exc:
        raise CostInputError(label, f"not valid TOML ({exc})") from exc
    origin = "catalogue" if strict else f"file {label}"
    return [_leaf(path, table, label, strict, origin) for path, table in _leaves(data, (), label)]


def parse_price_flag(text: str, book: PriceBook) -> Price:
    """`KEY=VALUE` from `--price`: the unit and limits come from the catalogue entry."""
    key, sep, raw = text.partition("=")
    key = key.strip()
    if not sep or not key:
        raise CostInputError("--price", f"expected KEY=VALUE, got {text!r}")
    value = _number_from_text(raw.strip(), f"--price {key}")
    old = book.get(key)
    if old is None and key.startswith(INSTANCE_PREFIX):
        instance_type = check_instance_type(key[len(INSTANCE_PREFIX) :], f"--price {key}")
        return Price(
            _instance_path(instance_type), value, INSTANCE_UNIT, "--price flag", None, origin="--price"
        )
    if old is None:
        hint = difflib.get_close_matches(key, list(book), n=1)
        suggestion = f"; did you mean {hint[0]!r}?" if hint else ""
        raise CostInputError(f"--price {key}", f"unknown price key{suggestion}")
    return Price(old.path, value, old.unit, "--price flag", None, note=old.note, origin="--price")


def instance_price_flag(instance_type: str, value: float) -> Price:
    """The `--instance-price` shorthand for `--price aws.ec2.instance_hour.TYPE=VALUE`."""
    check_range("--instance-price", value, 0, 1000)
    return Price(
        _instance_path(instance_type),
        value,
        INSTANCE_UNIT,
        "--instance-price flag",
        None,
        origin="--instance-price",
    )


def instance_price(instance_type: str, value: float, source: str, as_of: date | None, note: str) -> Price:
    """A fetched or given hourly price for one EC2 instance type."""
    return Price(_instance_path(instance_type), value, INSTANCE_UNIT, source, as_of, note=note, origin="aws")


def _instance_path(instance_type: str) -> tuple[str, ...]:
    return (*INSTANCE_PREFIX.rstrip(".").split("."), instance_type)


def dump_prices(prices: Iterable[Price], header: str) -> str:
    """TOML text for a user price file that `parse_prices` reads back unchanged (sorted by key,
    since TOML groups tables by their dotted prefix anyway)."""
    lines = [f"# {line}" if line else "#" for line in header.splitlines()]
    for price in sorted(prices, key=lambda p: p.path):
        lines += ["", "[" + ".".join(_toml_key(part) for part in price.path) + "]"]
        lines.append(f"value = {price.value!r}")
        lines.append(f"unit = {json.dumps(price.unit)}")
        lines.append(f"source = {json.dumps(price.source)}")
        if price.as_of is not None:
            lines.append(f"as_of = {price.as_of.isoformat()}")
        if price.assumption:
            lines.append("assumption = true")
        if price.unverified:
            lines.append("unverified = true")
        if price.note:
            lines.append(f"note = {json.dumps(price.note)}")
    return "\n".join(lines) + "\n"


def _toml_key(part: str) -> str:
    return part if _BARE_KEY.fullmatch(part) else json.dumps(part)


def _leaves(
    table: dict[str, Any], path: tuple[str, ...], label: str
) -> Iterator[tuple[tuple[str, ...], dict[str, Any]]]:
    if "value" in table:
        yield path, table
        return
    for name, item in table.items():
        if not isinstance(item, dict):
            where = ".".join((*path, name))
            raise CostInputError(f"{label}: {where}", "expected a table with `value` and `unit`")
        yield from _leaves(item, (*path, name), label)


def _leaf(path: tuple[str, ...], table: dict[str, Any], label: str, strict: bool, origin: str) -> Price:
    key = ".".join(path)
    if not path:
        raise CostInputError(label, "`value` must sit inside a [table] named by its key")
    for name in table:
        if name not in _LEAF_FIELDS or (name == "max" and not strict):
            raise CostInputError(
                f"{label}: {key}.{name}",
                f"unknown field (allowed: {', '.join(sorted(_LEAF_FIELDS - {'max'}))})",
            )
    maximum = _number(table["max"], f"{label}: {key}.max") if "max" in table else None
    value = _number(table["value"], f"{label}: {key}.value")
    _check_maximum(value, maximum, f"{label}: {key}.value")
    unit = _text(table, "unit", key, label, required=True)
    source = _text(table, "source", key, label, required=strict) or f"price file {label}"
    assumption = table.get("assumption", False)
    if not isinstance(assumption, bool):
        raise CostInputError(f"{label}: {key}.assumption", "must be true or false")
    unverified = table.get("unverified", False)
    if not isinstance(unverified, bool):
        raise CostInputError(f"{label}: {key}.unverified", "must be true or false")
    if strict and not assumption and not source.startswith(("https://", MEASURED_PREFIX)):
        raise CostInputError(
            f"{label}: {key}.source",
            f"must be an https:// URL, or {MEASURED_PREFIX!r} and the command that measured it, "
            "unless assumption = true",
        )
    if assumption and source.startswith(MEASURED_PREFIX):
        raise CostInputError(f"{label}: {key}.assumption", "a measured figure is not an assumption")
    if unverified and "as_of" in table:
        raise CostInputError(f"{label}: {key}.as_of", "an unverified figure has no check date; drop as_of")
    as_of = _as_of(table.get("as_of"), f"{label}: {key}.as_of", required=strict and not unverified)
    note = _text(table, "note", key, label, required=False)
    return Price(path, value, unit, source, as_of, assumption, note, origin, maximum, unverified)


def _as_of(raw: object, field: str, required: bool) -> date | None:
    if raw is None:
        if required:
            raise CostInputError(field, "is missing (required: a date YYYY-MM-DD)")
        return None
    if isinstance(raw, str):
        try:
            return date.fromisoformat(raw)
        except ValueError:
            raise CostInputError(field, f"must be a date YYYY-MM-DD, got {raw!r}") from None
    if isinstance(raw, date) and not isinstance(raw, datetime):
        return raw
    raise CostInputError(field, f"must be a date YYYY-MM-DD, got {raw!r}")


def _check_maximum(value: float, maximum: float | None, field: str) -> None:
    if maximum is not None and value > maximum:
        raise CostInputError(field, f"must be a number in [0, {number(maximum)}], got {number(value)}")


def _text(table: dict[str, Any], name: str, key: str, label: str, required: bool) -> str:
    raw = table.get(name)
    if raw is None:
        if required:
            raise CostInputError(f"{label}: {key}.{name}", "is missing (required: a non-empty string)")
        return ""
    if not isinstance(raw, str) or not raw.strip():
        raise CostInputError(f"{label}: {key}.{name}", "must be a non-empty string")
    return raw.strip()


def _number(raw: object, field: str) -> float:
    if isinstance(raw, bool) or not isinstance(raw, int | float):
        raise CostInputError(field, f"must be a number >= 0, got {raw!r}")
    value = float(raw)
    if not math.isfinite(value) or value < 0:
        raise CostInputError(field, f"must be a finite number >= 0, got {raw!r}")
    return value


def _number_from_text(raw: str, field: str) -> float:
    try:
        value = float(raw)
    except ValueError:
        raise CostInputError(field, f"value must be a number >= 0, got {raw!r}") from None
    return _number(value, field)
