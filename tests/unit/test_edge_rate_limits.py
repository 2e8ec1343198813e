"""The edge's rate limits against what its own page does, with the budgets wrangler.toml deploys.

The limits guard what costs (minting tokens, TURN credentials and calls). A page that follows its call
(edge/static/client.js: twice a second while the relay attaches, then once a second) must never be
refused, nor may callers who share one IP (a carrier-grade NAT, an office), and a hang-up never is:
a refused hang-up would hold the call's SFU session, relay and agent until the call's time limit.
"""

from __future__ import annotations

from collections import Counter
from pathlib import Path

from splitrelay.edge.app import EdgeApp
from splitrelay.edge.ratelimit import TokenBucket
from splitrelay.infra.wrangler import load_worker_spec
from tests.edge_support import browser_offer
from tests.unit.test_edge_app import Harness, error_of, offer_body

REPO = Path(__file__).resolve().parents[2]
SETUP_POLL_S = 0.5  # edge/static/client.js SETUP_POLLS x 500 ms, at most 40 (the edge's 20 s attach limit)
SETUP_POLLS = 40
RECORD_EVERY_S = 1.0  # RECORD_EVERY_MS


class WindowLimiter:
    """Cloudflare's Rate Limiting binding as configured (``simple = {limit, period}``): at most ``limit``
    requests per key in each ``period``-second window."""

    def __init__(self, limit: int, period: int, clock: Harness) -> None:
        self.limit = limit
        self.period = period
        self.harness = clock
        self.counts: Counter[tuple[str, int]] = Counter()

    async def allow(self, key: str) -> bool:
        window = (key, int(self.harness.now // self.period))
        if self.counts[window] >= self.limit:
            return False
        self.counts[window] += 1
        return True


def deployed_limits(h: Harness) -> EdgeApp:
    """The app with the limits wrangler.toml deploys (the Worker's IP_RATE_LIMIT and TOKEN_RATE_LIMIT)."""
    limits = {r.name: r for r in load_worker_spec(REPO / "wrangler.toml").ratelimits}
    ip, token = limits["IP_RATE_LIMIT"], limits["TOKEN_RATE_LIMIT"]
    h.app.ip_limiter = WindowLimiter(ip.limit, ip.period, h)
    h.app.token_limiter = WindowLimiter(token.limit, token.period, h)
    return h.app


async def follow_like_the_page(h: Harness, token: str, seconds: float) -> list[int]:
    """What the page sends for one call: ICE servers, the call, the slowest set-up the edge allows, then
    one read a second for ``seconds``, then the hang-up. Returns every status."""
    statuses = [(await h.request("GET", "/v1/ice-servers", token=token)).status]
    created = await h.request("POST", "/v1/calls", offer_body(browser_offer()), token=token)
    statuses.append(created.status)
    if created.status != 201:
        return statuses
    path = f"/v1/calls/{created.json()['call_id']}"
    for _ in range(SETUP_POLLS):
        statuses.append((await h.request("GET", path, token=token)).status)
        h.now += SETUP_POLL_S
    for _ in range(round(seconds / RECORD_EVERY_S)):
        statuses.append((await h.request("GET", path, token=token)).status)
        h.now += RECORD_EVERY_S
    statuses.append((await h.request("DELETE", path, token=token)).status)
    return statuses


async def test_the_page_is_never_refused_with_the_deployed_budgets() -> None:
    h = Harness()
    deployed_limits(h)
    statuses = await follow_like_the_page(h, h.token(), seconds=180)
    await h.drain()
    assert 429 not in statuses, Counter(statuses)
    assert statuses[:2] == [200, 201] and statuses[-1] == 200


async def test_callers_behind_one_ip_are_not_refused_while_their_calls_last() -> None:
    """Twelve callers behind one address (the harness's client IP) follow their calls for a minute."""
    h = Harness()
    deployed_limits(h)
    tokens = [h.token(sub=f"caller{i}") for i in range(12)]
    paths = []
    for token in tokens:
        created = await h.request("POST", "/v1/calls", offer_body(browser_offer()), token=token)
        assert created.status == 201, created.body
        paths.append(f"/v1/calls/{created.json()['call_id']}")
    statuses: Counter[int] = Counter()
    for _ in range(60):
        for token, path in zip(tokens, paths, strict=True):
            statuses[(await h.request("GET", path, token=token)).status] += 1
        h.now += RECORD_EVERY_S
    for token, path in zip(tokens, paths, strict=True):
        statuses[(await h.request("DELETE", path, token=token)).status] += 1
    await h.drain()
    assert statuses == {200: 12 * 61}


async def test_a_hang_up_is_never_refused() -> None:
    h = Harness()
    h.app.token_limiter = TokenBucket(rate=0.001, burst=4, clock=lambda: h.now)
    token = h.token()
    created = await h.create(token=token)
    path = f"/v1/calls/{created['call_id']}"
    reads = [(await h.request("GET", path, token=token)).status for _ in range(5)]
    assert 429 in reads  # the token's budget is spent
    hung_up = await h.request("DELETE", path, token=token)
    assert hung_up.status == 200 and hung_up.json()["state"] == "closed"
    await h.drain()


async def test_creating_calls_is_still_limited_per_ip_and_bad_tokens_cost_the_ip() -> None:
    h = Harness()
    h.app.ip_limiter = TokenBucket(rate=0.001, burst=3, clock=lambda: h.now)
    created = [
        (await h.request("POST", "/v1/calls", offer_body(browser_offer()), token=h.token(sub=f"c{i}"))).status
        for i in range(4)
    ]
    assert created == [201, 201, 201, 429]
    await h.drain()

    h = Harness()
    h.app.ip_limiter = TokenBucket(rate=0.001, burst=3, clock=lambda: h.now)
    guesses = [(await h.request("GET", "/v1/calls/c_guess", token="not-a-token")).status for _ in range(4)]
    assert guesses == [401, 401, 401, 429]
    limited = await h.request("GET", "/v1/calls/c_guess", token="not-a-token")
    assert error_of(limited)["message"].startswith("too many requests for this ip")
