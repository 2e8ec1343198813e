"""JSON validation for the contract's models, and the one dataclass ⇄ JSON codec they all share.

A model is a frozen dataclass deriving from :class:`JsonModel`. What its JSON looks like follows from
its declaration, read once per class:

- the JSON name is the attribute name in camelCase (Cloudflare's spec), or as written for a model
  with ``json_case = "snake"`` (our own edge → relay contract); ``field(metadata=json_field(...))``
  overrides the name, or the decoder, of one field;
- a field without a default is required (and always written); an optional one is left out of the
  JSON when it is None or empty, as the spec's examples do;
- the annotation gives the type: ``str``, ``bool``, ``int``, ``float``, an ``Enum``, a nested model,
  ``tuple[X, ...]`` (a JSON array) or ``dict[str, Any]`` (any JSON object);
- rules beyond the types go in the model's :meth:`JsonModel.validate`, which decoding calls.

Errors are :class:`SchemaError`: they name the JSON path (``tracks[0].mid``) and the limit, never the
value. Pure standard library, Python 3.11 syntax: the same file runs in the Worker (Pyodide).
"""

from __future__ import annotations

import dataclasses
import types
import typing
from collections.abc import Callable, Mapping
from enum import Enum
from typing import Any, ClassVar, Final, Literal, Self, TypeVar

T = TypeVar("T")
M = TypeVar("M", bound="JsonModel")


class RealtimeApiError(Exception):
    """Base of every error the contract raises."""


class SchemaError(RealtimeApiError, ValueError):
    """A document or argument does not fit the spec; ``field`` is the JSON path (``tracks[0].mid``)."""

    def __init__(self, field: str, message: str) -> None:
        super().__init__(field, message)
        self.field = field or "body"
        self.message = message

    def __str__(self) -> str:
        return f"{self.field}: {self.message}"


def json_type(value: object) -> str:
    """JSON type name of a value, for error messages that must not echo the value itself."""
    if value is None:
        return "null"
    if isinstance(value, bool):
        return "boolean"
    if isinstance(value, int | float):
        return "number"
    if isinstance(value, str):
        return "string"
    if isinstance(value, list | tuple):
        return "array"
    if isinstance(value, dict):
        return "object"
    return type(value).__name__


def join_path(path: str, key: str) -> str:
    return f"{path}.{key}" if path else key


def require(value: T | None, field: str) -> T:
    """The spec marks this field required."""
    if value is None:
        raise SchemaError(field, "is required")
    return value


def check_text(value: str | None, field: str, *, limit: int | None = None) -> None:
    """An optional text that, when present, is not empty and at most ``limit`` characters."""
    if value is None:
        return
    if not value:
        raise SchemaError(field, "must not be empty")
    if limit is not None and len(value) > limit:
        raise SchemaError(field, f"must be at most {limit} characters, got {len(value)}")


# --- the codec ----------------------------------------------------------------------------------------

# A decoder gets the raw JSON value and where it sits: the parent's path and the key (an array index for
# items), so the path string is only built when an error names it or a nested object needs it.
Decoder = Callable[[object, str, str | int], object]
Encoder = Callable[[Any], object]
_MISSING: Final = object()
_SPEC_KEY: Final = "splitrelay.json"


def _at(path: str, key: str | int) -> str:
    return f"{path}[{key}]" if isinstance(key, int) else join_path(path, key)


@dataclasses.dataclass(frozen=True)
class JsonFieldSpec:
    """How one field departs from the rules: another JSON name, or its own decoder."""

    name: str | None = None
    decode: Callable[[object, str], object] | None = None


def json_field(
    *, name: str | None = None, decode: Callable[[object, str], object] | None = None
) -> dict[str, JsonFieldSpec]:
    """``field(metadata=json_field(...))``: ``decode(value, path)`` replaces the type's decoder."""
    return {_SPEC_KEY: JsonFieldSpec(name, decode)}


class JsonModel:
    """Base of the contract's models: one generic :func:`to_json` and :func:`from_json` serve them all."""

    __slots__ = ()
    json_case: ClassVar[Literal["camel", "snake"]] = "camel"
    json_strict: ClassVar[bool] = False
    """Refuse unknown keys (our own contract); Cloudflare's documents may grow fields, so not theirs."""

    def to_json(self) -> dict[str, Any]:
        return to_json(self)

    @classmethod
    def from_json(cls, value: object, path: str = "") -> Self:
        return from_json(cls, value, path)

    def validate(self, path: str = "") -> None:
        """Rules beyond the field types; :func:`from_json` calls it with the object's JSON path."""


@dataclasses.dataclass(frozen=True)
class _Plan:
    decoders: tuple[tuple[str, str, Decoder, bool], ...]  # attribute, JSON key, decoder, required
    encoders: tuple[tuple[str, str, Encoder | None, bool], ...]  # attribute, JSON key, encoder, required
    keys: frozenset[str]
    strict: bool


_PLANS: dict[tuple[type, bool], _Plan] = {}


def to_json(model: JsonModel) -> dict[str, Any]:
    """The model's JSON object (JSON-ready: enums as their values, tuples as lists)."""
    doc: dict[str, Any] = {}
    for attr, key, encode, required in _plan(type(model), False).encoders:
        value = getattr(model, attr)
        if not required and (value is None or (type(value) in (tuple, dict) and not value)):
            continue
        doc[key] = value if encode is None else encode(value)
    return doc


def from_json(cls: type[M], value: object, path: str = "") -> M:
    """Read ``cls`` from a parsed JSON value; :class:`SchemaError` names the first field that is wrong."""
    return _decode(_plan(cls, False), cls, value, path)


def _decode(plan: _Plan, cls: type[M], value: object, path: str) -> M:
    if not isinstance(value, dict):
        raise SchemaError(path, f"expected an object, got {json_type(value)}")
    if plan.strict and not plan.keys.issuperset(value):
        unknown = sorted(key for key in value if key not in plan.keys)[0]
        raise SchemaError(join_path(path, unknown[:40]), "unknown field")
    values: dict[str, object] = {}
    for attr, key, decode, required in plan.decoders:
        raw = value.get(key, _MISSING)
        if raw is _MISSING:
            if required:
                raise SchemaError(join_path(path, key), "is required")
            continue
        values[attr] = decode(raw, path, key)
    model = cls(**values)
    model.validate(path)
    return model


def _plan(cls: type[JsonModel], strict: bool) -> _Plan:
    """The class's decoders and encoders, built on first use (annotations resolve only then)."""
    strict = strict or cls.json_strict
    plan = _PLANS.get((cls, strict))
    if plan is None:
        plan = _PLANS[(cls, strict)] = _compile(cls, strict)
    return plan


def _compile(cls: type[JsonModel], strict: bool) -> _Plan:
    if not dataclasses.is_dataclass(cls):
        raise TypeError(f"{cls.__name__} is not a dataclass")
    # Annotations are strings (``from __future__ import annotations``): resolve them in their modules.
    hints = typing.get_type_hints(cls)
    decoders: list[tuple[str, str, Decoder, bool]] = []
    encoders: list[tuple[str, str, Encoder | None, bool]] = []
    for item in dataclasses.fields(cls):
        spec = item.metadata.get(_SPEC_KEY) or JsonFieldSpec()
        key = spec.name or (_camel(item.name) if cls.json_case == "camel" else item.name)
        required = item.default is dataclasses.MISSING and item.default_factory is dataclasses.MISSING
        decode, encode = _codec(hints[item.name], strict, f"{cls.__name__}.{item.name}")
        if spec.decode is not None:
            decode = _custom(spec.decode)
        decoders.append((item.name, key, decode, required))
        encoders.append((item.name, key, encode, required))
    return _Plan(tuple(decoders), tuple(encoders), frozenset(key for _, key, _, _ in decoders), strict)


def _camel(name: str) -> str:
    head, *rest = name.split("_")
    return head + "".join(part[:1].upper() + part[1:] for part in rest)


def _codec(hint: Any, strict: bool, where: str) -> tuple[Decoder, Encoder | None]:
    origin, args = typing.get_origin(hint), typing.get_args(hint)
    if origin in (types.UnionType, typing.Union):
        present = [arg for arg in args if arg is not type(None)]
        if len(present) != 1:
            raise TypeError(f"{where}: only `X | None` unions have a JSON form, not {hint!r}")
        return _codec(present[0], strict, where)  # optional or not: the field's default says
    if origin is tuple:
        if len(args) != 2 or args[1] is not Ellipsis:
            raise TypeError(f"{where}: use tuple[X, ...] for a JSON array, not {hint!r}")
        item_decode, item_encode = _codec(args[0], strict, where)
        return _array(item_decode), (list if item_encode is None else _list_of(item_encode))
    if origin is dict or hint is dict:
        return _object, None
    scalar = _SCALARS.get(hint)
    if scalar is not None:
        return scalar, None
    if isinstance(hint, type) and issubclass(hint, Enum):
        return _enum(hint), _enum_value
    if isinstance(hint, type) and issubclass(hint, JsonModel):
        return _nested(hint, strict), to_json
    raise TypeError(f"{where}: no JSON form for {hint!r}")


def _string(value: object, path: str, key: str | int) -> object:
    if isinstance(value, str):
        return value
    raise SchemaError(_at(path, key), f"expected string, got {json_type(value)}")


def _boolean(value: object, path: str, key: str | int) -> object:
    if isinstance(value, bool):
        return value
    raise SchemaError(_at(path, key), f"expected boolean, got {json_type(value)}")


def _integer(value: object, path: str, key: str | int) -> object:
    if isinstance(value, int) and not isinstance(value, bool):
        return value
    if isinstance(value, float):
        if not value.is_integer():
            raise SchemaError(_at(path, key), "expected integer, got a fraction")
        return int(value)
    raise SchemaError(_at(path, key), f"expected integer, got {json_type(value)}")


def _number(value: object, path: str, key: str | int) -> object:
    if isinstance(value, int | float) and not isinstance(value, bool):
        return float(value)
    raise SchemaError(_at(path, key), f"expected number, got {json_type(value)}")


def _object(value: object, path: str, key: str | int) -> object:
    if isinstance(value, dict):
        return value
    raise SchemaError(_at(path, key), f"expected an object, got {json_type(value)}")


_SCALARS: Final[Mapping[object, Decoder]] = {str: _string, bool: _boolean, int: _integer, float: _number}


def _enum(cls: type[Enum]) -> Decoder:
    allowed = ", ".join(repr(member.value) for member in cls)

    def decode(value: object, path: str, key: str | int) -> object:
        if not isinstance(value, str):
            raise SchemaError(_at(path, key), f"expected string, got {json_type(value)}")
        try:
            return cls(value)
        except ValueError:
            raise SchemaError(_at(path, key), f"must be one of {allowed}") from None

    return decode


def _enum_value(value: Enum) -> object:
    return value.value


def _nested(cls: type[JsonModel], strict: bool) -> Decoder:
    def decode(value: object, path: str, key: str | int) -> object:
        return _decode(_plan(cls, strict), cls, value, _at(path, key))

    return decode


def _array(item: Decoder) -> Decoder:
    def decode(value: object, path: str, key: str | int) -> object:
        if not isinstance(value, list):
            raise SchemaError(_at(path, key), f"expected array, got {json_type(value)}")
        where = _at(path, key)
        return tuple(item(entry, where, index) for index, entry in enumerate(value))

    return decode


def _list_of(item: Encoder) -> Encoder:
    def encode(value: tuple[Any, ...]) -> object:
        return [item(entry) for entry in value]

    return encode


def _custom(parse: Callable[[object, str], object]) -> Decoder:
    def decode(value: object, path: str, key: str | int) -> object:
        return parse(value, _at(path, key))

    return decode
