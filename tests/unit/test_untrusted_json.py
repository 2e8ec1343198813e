"""JSON from strangers (edge/contract/untrusted_json.py): bounded before parsing, every failure named."""

from __future__ import annotations

import json

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from splitrelay.contract.json_fields import SchemaError
from splitrelay.contract.untrusted_json import MAX_DEPTH, nests_deeper_than, read_json

LIMIT = 64 * 1024


@pytest.mark.parametrize(
    ("data", "message"),
    [
        (b"[" * 60_000, "nests deeper than 32 levels"),  # unbalanced: the parser would still recurse
        (b"[" * 33 + b"]" * 33, "nests deeper than 32 levels"),
        (b'{"a":' * 40 + b"1" + b"}" * 40, "nests deeper than 32 levels"),
        (b'{"exp": 1e309}', "is not valid UTF-8 JSON (1e309 overflows a float)"),
        (b'{"x": NaN}', "is not valid UTF-8 JSON (NaN is not a number)"),
        (b'{"x": -Infinity}', "is not valid UTF-8 JSON (-Infinity is not a number)"),
        (b'{"t": "\\ud83d"}', "carries a lone UTF-16 surrogate escape"),
        (b"\xff{}", "is not valid UTF-8 JSON"),
        (b"{not json", "is not valid UTF-8 JSON"),
        (b'{"n": ' + b"9" * 5000 + b"}", "is not valid UTF-8 JSON (Exceeds the limit"),
        (b"x" * (LIMIT + 1), f"must be at most {LIMIT} bytes, got {LIMIT + 1}"),
    ],
)
def test_refusals_name_the_field_and_the_limit(data: bytes, message: str) -> None:
    with pytest.raises(SchemaError) as info:
        read_json(data, max_bytes=LIMIT, field="body")
    assert info.value.field == "body"
    assert info.value.message.startswith(message)


def test_what_is_fine_reads_as_json_would() -> None:
    doc = {"a": [{"b": ']]]] {{{{ " [[ \\'}], "c": "caf\u00e9 \U0001f600", "d": 1.5, "e": None}
    data = json.dumps(doc).encode()
    assert read_json(data, max_bytes=LIMIT) == doc
    assert read_json(b"[" * 32 + b"]" * 32, max_bytes=LIMIT) is not None
    assert read_json(b'"\\ud83d\\ude00"', max_bytes=LIMIT) == "\U0001f600"


def _depth(value: object) -> int:
    if isinstance(value, list):
        return 1 + max((_depth(v) for v in value), default=0)
    if isinstance(value, dict):
        return 1 + max((_depth(v) for v in value.values()), default=0)
    return 0


documents = st.recursive(
    st.none() | st.booleans() | st.integers() | st.text(alphabet='[]{}"\\ab:,'),
    lambda inner: (
        st.lists(inner, max_size=3) | st.dictionaries(st.text(alphabet='[]{}"a'), inner, max_size=3)
    ),
    max_leaves=60,
)


@settings(max_examples=300, deadline=None)
@given(documents, st.integers(min_value=1, max_value=8))
def test_the_depth_scan_agrees_with_the_document(doc: object, limit: int) -> None:
    """Brackets inside strings never count; the scan says 'too deep' exactly when the document is."""
    assert nests_deeper_than(json.dumps(doc).encode(), limit) == (_depth(doc) > limit)


@settings(max_examples=300, deadline=None)
@given(st.binary(max_size=300))
def test_any_bytes_give_a_document_or_a_schema_error(data: bytes) -> None:
    try:
        read_json(data, max_bytes=200, max_depth=MAX_DEPTH)
    except SchemaError:
        pass
