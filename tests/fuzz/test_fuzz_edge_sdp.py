"""Fuzz target 3: SDP offers through the edge. A browser's valid offer, mutated line by line (lines dropped,
duplicated, swapped, garbled, hostile lines inserted, truncated, line endings changed), in the body of a new
call and of a renegotiation. The oracle: status below 500 and a JSON error naming the problem
(tests/fuzz/edge_target.py). The edge's own offer check (edge/offer.py) runs first; what it lets through
goes on to the in-memory SFU and relay.
"""

from __future__ import annotations

import asyncio
import json
from typing import Any

import pytest

from splitrelay.edge import offer as edge_offer
from splitrelay.edge.web import EdgeRequest
from tests.edge_support import browser_offer
from tests.fuzz.edge_target import PARIS, EdgeFuzz, describe
from tests.fuzz.engine import Source, chance, choice, run_target
from tests.fuzz.mutate import mutate_sdp

pytestmark = pytest.mark.fuzz

SEEDS = (
    browser_offer(),
    browser_offer("audio"),
    browser_offer("0", extra="a=candidate:1 1 udp 2122260223 127.0.0.1 50000 typ host\r\n"),
    browser_offer("0").replace("\r\n", "\n"),
)


async def one_offer(fuzz: EdgeFuzz, source: Source) -> None:
    sdp = mutate_sdp(source, choice(source, SEEDS))
    if chance(source, 3):
        method, path = "PATCH", f"/v1/calls/{fuzz.call_id}"
    else:
        method, path = "POST", "/v1/calls"
    body = json.dumps({"offer": {"type": "offer", "sdp": sdp}}, ensure_ascii=chance(source, 2))
    request = EdgeRequest(
        method, path, headers=fuzz.headers(), body=body.encode("utf-8", "surrogatepass"), cf=PARIS
    )
    await fuzz.request(request, describe(request))


def _run(name: str, one: Any, examples: int | None = None) -> None:
    fuzz = EdgeFuzz()

    async def step(source: Source) -> None:
        await one(fuzz, source)

    with asyncio.Runner() as runner:
        run_target(name, runner, step, examples=examples)


def test_edge_sdp_offers_never_5xx() -> None:
    _run("edge-sdp", one_offer)


def test_a_raise_injected_in_the_offer_check_is_found(monkeypatch: pytest.MonkeyPatch) -> None:
    """The target can fail: an offer check that trips over a second a=mid line (IndexError) is caught."""
    real = edge_offer.check_offer

    def fragile(sdp: object, field: str = "offer.sdp") -> edge_offer.OfferFacts:
        if isinstance(sdp, str) and sdp.count("a=mid:") > 1:
            raise IndexError("list index out of range")
        return real(sdp, field)

    monkeypatch.setattr("splitrelay.edge.calls.check_offer", fragile)
    with pytest.raises(AssertionError, match="HTTP 500"):
        _run("edge-sdp-injected", one_offer, examples=300)
