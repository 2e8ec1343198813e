"""Generated input against the emulator: request bodies drawn from the spec's own request schemas.

Each example is built from the schema of one operation (``tests/spec.py`` loads the YAML), with field
values biased towards ones that reach deep into the emulator (a live publisher's sessionId, a real
aiortc offer, ``#trackName`` mids) and, for some examples, any JSON at all. Whatever comes in, the
emulator must answer without a 5xx and with a body that validates against the spec (SpecCheck hook).
"""

from __future__ import annotations

import asyncio
import json
import string
from collections.abc import Callable, Coroutine
from dataclasses import dataclass
from typing import Any

import httpx
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from splitrelay.emulator.config import Timers
from splitrelay.emulator.emulator import Emulator
from splitrelay.emulator.http_api import create_app
from splitrelay.emulator.peer import SessionPeer
from splitrelay.emulator.turn import TurnService
from splitrelay.relay.media.peer import LOOPBACK
from splitrelay.relay.media.srtp_fastpath import FastPathConfig
from tests import spec
from tests.emulator_fixtures import APP_ID, APP_SECRET, SFU_OPERATIONS, SpecCheck, emulator_config

pytestmark = pytest.mark.integration

BASE = "http://emulator.test/v1"
MAX_EXAMPLES = 60
AUTH = {"Authorization": f"Bearer {APP_SECRET}"}


@dataclass
class Target:
    http: httpx.AsyncClient
    check: SpecCheck
    offer: str
    publisher: str


async def _client_offer() -> str:
    """A real aiortc offer with one sendrecv audio m-section (mid "0"), as a browser would send."""
    peer = SessionPeer(
        candidates=LOOPBACK,
        fast_path_config=FastPathConfig(),
        on_packet=lambda _p: None,
        on_attached=lambda _f: None,
        on_state=lambda _s: None,
    )
    try:
        peer.add_transceiver("sendrecv")
        return await peer.create_offer()
    finally:
        await peer.close()


async def open_target() -> tuple[Target, Callable[[], Coroutine[Any, Any, None]]]:
    """An emulator (in-process ASGI) with one live publisher of "mic"; returns it and its closer."""
    config = emulator_config(Timers(connect_wait=0.1))
    emulator = Emulator(config)
    check = SpecCheck()
    app = create_app(emulator, TurnService(config, lambda: ("stun:127.0.0.1:3478",)))
    http = check.client(transport=httpx.ASGITransport(app=app), base_url=BASE)

    async def close() -> None:
        await http.aclose()
        await emulator.close()

    try:
        offer = await _client_offer()
        publisher = (await http.post(f"/apps/{APP_ID}/sessions/new", headers=AUTH)).json()["sessionId"]
        pushed = await http.post(
            f"/apps/{APP_ID}/sessions/{publisher}/tracks/new",
            headers=AUTH,
            json={
                "sessionDescription": {"type": "offer", "sdp": offer},
                "tracks": [{"location": "local", "mid": "0", "trackName": "mic"}],
            },
        )
        assert pushed.status_code == 200 and "errorCode" not in pushed.json()["tracks"][0]
    except BaseException:
        await close()
        raise
    return Target(http, check, offer, publisher), close


# --- strategies from the spec's schemas ---------------------------------------------------------------

_SCHEMAS: dict[str, Any] = spec.load_spec()["components"]["schemas"]
_TEXT = st.text(alphabet=string.printable, max_size=12)
_JSON_LEAF = (
    st.none()
    | st.booleans()
    | st.integers(-(2**31), 2**31)
    | st.floats(allow_nan=False, allow_infinity=False)
    | _TEXT
)
ANY_JSON = st.recursive(
    _JSON_LEAF,
    lambda inner: st.lists(inner, max_size=3) | st.dictionaries(_TEXT, inner, max_size=3),
    max_leaves=8,
)


def _resolve(schema: dict[str, Any]) -> dict[str, Any]:
    ref = schema.get("$ref")
    if isinstance(ref, str):
        return _SCHEMAS[ref.rsplit("/", 1)[-1]]  # type: ignore[no-any-return]
    return schema


def _field_values(name: str, context: Target | None) -> st.SearchStrategy[Any] | None:
    """Values worth trying for a named field, beyond what its type allows."""
    if context is None:
        return None
    if name == "sessionId":
        return st.sampled_from([context.publisher, "0" * 32]) | _TEXT
    if name == "trackName":
        return st.sampled_from(["mic", "voice"]) | _TEXT
    if name == "mid":
        return st.sampled_from(["0", "1", "#mic", "#voice", "#", ""]) | _TEXT
    if name == "sdp":
        return st.sampled_from([context.offer, "v=0\r\n", ""]) | _TEXT
    if name == "kind":
        return st.sampled_from(["audio", "video"]) | _TEXT
    return None


def from_schema(schema: dict[str, Any], context: Target | None, name: str = "", depth: int = 0) -> Any:
    """A Hypothesis strategy for documents of one OpenAPI schema (the subset this spec uses)."""
    schema = _resolve(schema)
    special = _field_values(name, context)
    if special is not None:
        return special
    if "allOf" in schema:
        merged: dict[str, Any] = {"type": "object", "properties": {}, "required": []}
        for branch in schema["allOf"]:
            branch = _resolve(branch)
            merged["properties"].update(branch.get("properties", {}))
            merged["required"] += branch.get("required", [])
        return from_schema(merged, context, name, depth)
    if "oneOf" in schema:
        return st.one_of([from_schema(b, context, name, depth) for b in schema["oneOf"]])
    if "enum" in schema:
        return st.sampled_from(schema["enum"]) | _TEXT
    kind = schema.get("type", "object" if "properties" in schema else None)
    if kind == "object" and depth < 4:
        properties = schema.get("properties", {})
        required = set(schema.get("required", []))
        strategies = {key: from_schema(sub, context, key, depth + 1) for key, sub in properties.items()}
        return st.fixed_dictionaries(
            {k: v for k, v in strategies.items() if k in required},
            optional={k: v for k, v in strategies.items() if k not in required},
        )
    if kind == "array":
        items = from_schema(schema.get("items", {}), context, name, depth + 1)
        return st.lists(items, min_size=schema.get("minItems", 0), max_size=min(schema.get("maxItems", 3), 3))
    if kind == "string":
        return _TEXT
    if kind == "boolean":
        return st.booleans()
    if kind in ("integer", "number"):
        return st.integers(-10, 200_000)
    return ANY_JSON


def spec_examples(method: str, path: str, context: Target) -> list[Any]:
    """The spec's own request examples, pointed at live ids and a real offer: mostly valid requests."""
    out = []
    for example in spec.examples(method, path):
        if example.status is not None:
            continue
        text = json.dumps(example.value)
        for session_id in _EXAMPLE_SESSION_IDS:
            text = text.replace(session_id, context.publisher)
        doc = json.loads(text)
        _point_at_live(doc, context)
        out.append(doc)
    return out


_EXAMPLE_SESSION_IDS = ("2a45361d5fd7cc14eface0587c276c94",)


def _point_at_live(doc: Any, context: Target) -> None:
    if isinstance(doc, dict):
        for key, value in list(doc.items()):
            if key == "sdp":
                doc[key] = context.offer
            elif key == "trackName" and doc.get("location") == "remote":
                doc[key] = "mic"
            else:
                _point_at_live(value, context)
    elif isinstance(doc, list):
        for item in doc:
            _point_at_live(item, context)


def bodies(method: str, path: str, context: Target) -> st.SearchStrategy[Any]:
    try:
        schema = spec.request_schema(method, path)
    except KeyError:
        return st.none()
    seeds = spec_examples(method, path, context)
    options = [from_schema(schema, context), ANY_JSON]
    if seeds:
        options.append(st.sampled_from(seeds))
    return st.one_of(options)


OPERATION = st.sampled_from(SFU_OPERATIONS)


async def one_request(target: Target, data: st.DataObject) -> tuple[str, str, int]:
    method, template = data.draw(OPERATION, label="operation")
    session = data.draw(st.sampled_from(["own", "publisher", "unknown"]), label="session")
    if session == "own":
        created = await target.http.post(f"/apps/{APP_ID}/sessions/new", headers=AUTH)
        session_id = created.json()["sessionId"]
    else:
        session_id = target.publisher if session == "publisher" else "f" * 32
    path = template.replace("{appId}", APP_ID).replace("{sessionId}", session_id)
    body = data.draw(bodies(method, template, target), label="body")
    query = data.draw(
        st.fixed_dictionaries(
            {}, optional={"thirdparty": st.sampled_from(["true", "false", "1"]), "correlationId": _TEXT}
        ),
        label="query",
    )
    response = await target.http.request(
        method, path, headers=AUTH, json=body, params=query if template.endswith("/new") else None
    )
    assert response.status_code < 500, (response.status_code, response.text)
    doc = response.json()
    assert isinstance(doc, dict)
    if response.status_code >= 300:
        assert "errorCode" in doc
    item_error = any("errorCode" in t for t in doc.get("tracks", []) if isinstance(t, dict))
    outcome = "item-error" if response.status_code == 200 and item_error else str(response.status_code)
    return method, template, int(outcome) if outcome.isdigit() else -1


def test_generated_requests_get_no_5xx_and_spec_shaped_answers() -> None:
    outcomes: set[tuple[str, str, int]] = set()
    with asyncio.Runner() as runner:
        target, close = runner.run(open_target())
        try:

            @settings(
                max_examples=MAX_EXAMPLES * len(SFU_OPERATIONS),
                deadline=None,
                suppress_health_check=[HealthCheck.too_slow],
                database=None,
                derandomize=True,  # the same examples every run: the coverage guard below cannot flake
            )
            @given(data=st.data())
            def run(data: st.DataObject) -> None:
                outcomes.add(runner.run(one_request(target, data)))

            run()
            checked = target.check.checked
        finally:
            runner.run(close())
    # Guard against a run that tests nothing: every operation answered, and the main one both ways.
    assert {template for _, template, _ in outcomes} == {template for _, template in SFU_OPERATIONS}
    tracks_new = {status for _, template, status in outcomes if template.endswith("tracks/new")}
    assert {200, 400, -1} <= tracks_new, tracks_new
    assert checked >= MAX_EXAMPLES * len(SFU_OPERATIONS)
