"""JSON from strangers: size and nesting bounded before the parser runs, every failure a SchemaError.

Why a scan before ``json.loads``: CPython's parser raises RecursionError on deep nesting, but the Worker's
(Pyodide) runs out of the JavaScript stack first, and that is a fatal error for the whole isolate: one
request of nested brackets took down every later one. So the nesting depth is measured on the bytes
(brackets outside strings, found by regular expressions that run in C) and refused before parsing.
Valid JSON text that no reply could carry again is refused too: non-finite numbers (``NaN``,
``Infinity``, ``1e999``) and lone UTF-16 surrogate escapes (what JavaScript's JSON.stringify makes of a
string cut mid-emoji).
"""

from __future__ import annotations

import json
import re
from typing import Final

from splitrelay.contract.json_fields import SchemaError

MAX_DEPTH: Final = 32
"""Deeper than any document the kit exchanges (the SFU API's deepest is 4)."""
NOT_JSON: Final = "is not valid UTF-8 JSON"
_STRING: Final = re.compile(rb'"(?:[^"\\]|\\.)*"', re.DOTALL)  # linear: no nested quantifiers
_NOT_BRACKET: Final = re.compile(rb"[^\[\]{}]+")
_INNERMOST: Final = re.compile(rb"\[\]|\{\}")
_LEADING_OPENERS: Final = re.compile(rb"[\[{]*")


def nests_deeper_than(data: bytes, limit: int) -> bool:
    """Whether arrays and objects nest more than ``limit`` deep. Strings are blanked and everything but
    brackets dropped, then each pass removes the innermost pairs (one level), all in C. Brackets that do
    not pair up (malformed JSON, which the parser still recurses into before it fails) are counted."""
    brackets = _NOT_BRACKET.sub(b"", _STRING.sub(b'""', data))
    for _ in range(limit):
        if not brackets:
            return False
        reduced = _INNERMOST.sub(b"", brackets)
        if len(reduced) == len(brackets):
            break  # what is left does not pair up: malformed, but the parser would still recurse into it
        brackets = reduced
    else:
        return _INNERMOST.search(brackets) is not None
    # Only brackets that do not pair up are left, so the parser fails at the first closing one at the
    # latest: it recurses once per opening bracket before it.
    return len(_LEADING_OPENERS.match(brackets).group()) > limit  # type: ignore[union-attr]


def _reject_constant(name: str) -> float:
    raise ValueError(f"{name} is not a number")


def _finite_float(text: str) -> float:
    value = float(text)
    if value in (float("inf"), float("-inf")):
        raise ValueError(f"{text[:20]} overflows a float")
    return value


def read_json(data: bytes, *, max_bytes: int, field: str = "body", max_depth: int = MAX_DEPTH) -> object:
    """The parsed document, or a :class:`SchemaError` naming ``field`` and the limit it broke."""
    if len(data) > max_bytes:
        raise SchemaError(field, f"must be at most {max_bytes} bytes, got {len(data)}")
    if nests_deeper_than(data, max_depth):
        raise SchemaError(field, f"nests deeper than {max_depth} levels")
    try:
        doc = json.loads(data.decode("utf-8"), parse_constant=_reject_constant, parse_float=_finite_float)
    except (UnicodeDecodeError, json.JSONDecodeError):
        raise SchemaError(field, NOT_JSON) from None
    except (ValueError, RecursionError) as exc:  # a non-finite number, an int past 4300 digits
        raise SchemaError(field, f"{NOT_JSON} ({str(exc)[:80]})") from None
    if b"\\u" in data:
        try:
            json.dumps(doc, ensure_ascii=False).encode("utf-8")
        except UnicodeEncodeError:
            raise SchemaError(field, "carries a lone UTF-16 surrogate escape") from None
    return doc
