"""The edge's routes: tokens, ICE servers, calls. Runtime-neutral: EdgeRequest in, EdgeResponse out.

The Worker (edge/entry.py) and the local adapter (scripts/devtools/local_edge.py) both build an
:class:`EdgeApp` and call
:meth:`EdgeApp.handle`; everything below is plain Python over injected I/O. Every refusal is a JSON
error naming the field and the limit; unexpected failures are a bare 500 with no detail (the detail
goes to the log, which never holds tokens or secrets).
"""

from __future__ import annotations

import hmac
import logging
import re
import time
from collections.abc import Awaitable, Callable, Mapping
from dataclasses import dataclass
from typing import Any, Final

from splitrelay.contract.control import (
    CallEnded,
    CallStages,
    Heartbeat,
    HeartbeatReply,
    check_call_id,
    check_relay_id,
)
from splitrelay.contract.json_fields import SchemaError
from splitrelay.contract.sfu import SdpType, SessionDescription
from splitrelay.contract.signing import SignatureError, Verifier
from splitrelay.edge import tokens
from splitrelay.edge.calls import CallService, Defer, Fetch, RecordClient, WatchClient
from splitrelay.edge.config import EdgeConfig, load_config
from splitrelay.edge.ratelimit import RateLimiter, limit_key
from splitrelay.edge.relays import (
    CachedRegistry,
    CallerLocation,
    Choice,
    Loader,
    NoRelayError,
    RegistryError,
    rank_relays,
)
from splitrelay.edge.web import (
    EdgeError,
    EdgeRequest,
    EdgeResponse,
    bad_request,
    bearer_token,
    json_response,
    read_json_object,
)

log = logging.getLogger("splitrelay.edge")

CALL_PATH: Final = re.compile(r"/v1/calls/([^/]{1,128})")
RELAY_PATH: Final = re.compile(r"/v1/relays/([^/]{1,64})/(?:heartbeat|calls/([^/]{1,128})/(end|stages))")
ROUTES: Final = {
    "/healthz": ("GET",),
    "/v1/tokens": ("POST",),
    "/v1/ice-servers": ("GET",),
    "/v1/calls": ("POST",),
}
CALL_METHODS: Final = ("GET", "PATCH", "DELETE")


@dataclass
class EdgeApp:
    config: EdgeConfig
    calls: CallService
    registry: CachedRegistry
    ip_limiter: RateLimiter
    token_limiter: RateLimiter
    clock: Callable[[], float] = time.time
    relay_verifier: Verifier | None = None

    def __post_init__(self) -> None:
        # Relay → edge messages are signed with the relays' key (the one the edge signs its control
        # requests with); this isolate's replay cache refuses a nonce it has seen (docs/edge.md).
        if self.relay_verifier is None:
            keys = {self.config.relay_signing_key_id: self.config.relay_signing_key}
            self.relay_verifier = Verifier(keys=keys, clock=self.clock)

    async def handle(self, request: EdgeRequest) -> EdgeResponse:
        origin = request.header("origin")
        cors = origin is not None and origin in self.config.allowed_origins
        if request.method == "OPTIONS" and origin is not None:
            return self._preflight(origin, cors)
        try:
            response = await self._route(request)
        except EdgeError as exc:
            response = exc.response()
        except Exception:
            log.exception("unhandled error on %s %s", request.method, request.path)
            response = EdgeError(500, "internal_error", "internal error").response()
        if cors and origin is not None:
            cors_headers = (("access-control-allow-origin", origin), ("vary", "origin"))
            response = EdgeResponse(response.status, (*response.headers, *cors_headers), response.body)
        return response

    def _preflight(self, origin: str, allowed: bool) -> EdgeResponse:
        """CORS preflight: only origins in ALLOWED_ORIGINS (tokens travel as bearer headers, not cookies)."""
        if not allowed:
            return EdgeError(
                403, "origin_not_allowed", f"origin: {origin[:80]!r} is not in ALLOWED_ORIGINS"
            ).response()
        return EdgeResponse(
            204,
            (
                ("access-control-allow-origin", origin),
                ("access-control-allow-methods", "GET, POST, PATCH, DELETE"),
                ("access-control-allow-headers", "authorization, content-type"),
                ("access-control-max-age", "600"),
                ("vary", "origin"),
            ),
        )

    async def _route(self, request: EdgeRequest) -> EdgeResponse:
        path = request.path
        relay_match = RELAY_PATH.fullmatch(path)
        if relay_match is not None:
            if request.method != "POST":
                error = EdgeError(405, "method_not_allowed", f"method: {path[:80]} allows POST")
                response = error.response()
                return EdgeResponse(response.status, (*response.headers, ("allow", "POST")), response.body)
            return await self._from_relay(
                request, relay_match.group(1), relay_match.group(2), relay_match.group(3)
            )
        match = CALL_PATH.fullmatch(path)
        allowed = ROUTES.get(path) or (CALL_METHODS if match else None)
        if allowed is None:
            raise EdgeError(404, "not_found", f"path: no route {path[:80]!r}")
        if request.method not in allowed:
            error = EdgeError(405, "method_not_allowed", f"method: {path} allows {', '.join(allowed)}")
            response = error.response()
            return EdgeResponse(
                response.status, (*response.headers, ("allow", ", ".join(allowed))), response.body
            )
        if path == "/healthz":
            return json_response(200, {"status": "ok"})
        if match is None:  # what starts something (a token, TURN credentials, a call): see _authenticate
            await self._limit(self.ip_limiter, "ip", request.client_ip or "unknown")
        if path == "/v1/tokens":
            return await self._issue_token(request)
        handler: Callable[[EdgeRequest, tokens.Claims], Awaitable[EdgeResponse]]
        if path == "/v1/ice-servers":
            await self._authenticate(request, tokens.SCOPE_ICE)
            ice = await self.calls.ice_servers()
            # ttl_s: what the credentials have left (they may be shared: edge/ice.py), None for STUN.
            return json_response(200, {"ice_servers": ice.servers, "ttl_s": ice.ttl_s(self.clock())})
        try:
            claims = await self._authenticate(request, tokens.SCOPE_CALLS, limited=request.method != "DELETE")
        except EdgeError as exc:
            if match is not None and exc.status in (401, 403):  # guessing tokens costs the IP's budget
                await self._limit(self.ip_limiter, "ip", request.client_ip or "unknown")
            raise
        if match is None:
            return await self._create_call(request, claims)
        try:
            check_call_id(match.group(1))
        except SchemaError as exc:
            raise EdgeError(404, "unknown_call", str(exc)) from None
        handler = {"GET": self._get_call, "PATCH": self._patch_call, "DELETE": self._delete_call}[
            request.method
        ]
        return await handler(request, claims)

    async def _from_relay(
        self, request: EdgeRequest, relay_id: str, call_id: str | None, what: str | None = None
    ) -> EdgeResponse:
        """A relay's signed heartbeat, call end or agent stage marks. Signed, so no IP limit (a relay
        beats 4 times a second)."""
        assert self.relay_verifier is not None
        target = request.path + (f"?{request.query}" if request.query else "")
        try:
            self.relay_verifier.check_headers(request.headers)
            self.relay_verifier.verify(request.method, target, request.body, request.headers)
        except SignatureError as exc:
            if str(exc).startswith("replayed"):
                raise EdgeError(409, "replayed", str(exc)) from None
            raise EdgeError(401, "unauthorized", str(exc)) from None
        try:
            check_relay_id(relay_id)
            if call_id is not None:
                check_call_id(call_id)
        except SchemaError as exc:
            raise bad_request(exc.field, exc.message) from None
        try:
            relays = await self.registry.get()
        except RegistryError as exc:
            raise EdgeError(503, "edge_misconfigured", f"the relay registry is invalid: {exc}") from None
        if not any(relay.id == relay_id for relay in relays):
            raise EdgeError(404, "unknown_relay", f"relay_id: {relay_id!r} is not in the relay registry")
        doc = read_json_object(request)
        try:
            if call_id is None:
                beat = Heartbeat.from_json(doc)
                reply = await self.calls.heartbeat(relay_id, beat.to_json())
                answer = HeartbeatReply.from_json(reply)
                return json_response(
                    200,
                    {
                        "draining_seen": answer.draining_seen,
                        "timeout_ms": answer.timeout_ms,
                        "closed": list(answer.closed),
                    },
                )
            if what == "stages":
                marks = CallStages.from_json(doc)
            else:
                ended = CallEnded.from_json(doc)
        except SchemaError as exc:
            raise bad_request(exc.field, exc.message) from None
        if what == "stages":
            stages = [stage.to_json() for stage in marks.stages]
            return json_response(200, await self.calls.relay_stages(relay_id, call_id, stages))
        result = await self.calls.relay_ended(relay_id, call_id, ended.code.value, ended.reason)
        return json_response(200, result)

    async def _limit(self, limiter: RateLimiter, kind: str, value: str) -> None:
        if not await limiter.allow(limit_key(kind, value)):
            raise EdgeError(
                429, "rate_limited", f"too many requests for this {kind}; retry shortly", retry_after=10
            )

    async def _authenticate(self, request: EdgeRequest, scope: str, *, limited: bool = True) -> tokens.Claims:
        """The request's token claims, counted against the token's rate limit when ``limited``.

        What the limits are for is what costs: minting tokens, TURN credentials and calls (per IP and per
        token). A call's own reads and its renegotiation answer count per token only: many callers share
        one IP behind a carrier-grade NAT or an office, and the page reads its record every second. A
        hang-up is never limited: refusing it would keep the call's SFU session, relay and agent held
        until the call's time limit (docs/edge.md, "Rate limits").
        """
        token = bearer_token(request)
        if token is None:
            raise EdgeError(
                401, "unauthorized", "authorization: a Bearer token is required", field="authorization"
            )
        try:
            claims = tokens.verify(self.config.token_signing_key, token, clock=self.clock)
        except tokens.TokenError as exc:
            raise EdgeError(401, f"token_{exc.code}", exc.message, field="authorization") from None
        if not claims.allows(scope):
            raise EdgeError(403, "insufficient_scope", f"token scope: needs {scope!r}", field="authorization")
        if limited:
            await self._limit(self.token_limiter, "token", claims.jti)
        return claims

    async def _issue_token(self, request: EdgeRequest) -> EdgeResponse:
        expected = self.config.api_key
        if expected is None:
            raise EdgeError(
                403, "token_issuance_disabled", "POST /v1/tokens is disabled: set the API_KEY secret"
            )
        presented = bearer_token(request)
        if presented is None or not hmac.compare_digest(presented.encode(), expected.reveal().encode()):
            raise EdgeError(
                401, "unauthorized", "authorization: a valid API key is required", field="authorization"
            )
        doc = read_json_object(request)
        unknown = sorted(set(doc) - {"sub", "scope", "ttl_s"})
        if unknown:
            raise bad_request(unknown[0][:40], "unknown field (allowed: sub, scope, ttl_s)")
        ttl = doc.get("ttl_s", tokens.DEFAULT_TTL_S)
        try:
            ttl = tokens.check_ttl(ttl)
            if ttl > self.config.token_max_ttl_s:
                raise tokens.TokenError(
                    "invalid_claims", f"ttl_s: must be at most {self.config.token_max_ttl_s} seconds"
                )
            scopes = tokens.check_scopes(doc.get("scope", tokens.SCOPE_CALLS))
            token, claims = tokens.issue(
                self.config.token_signing_key,
                tokens.check_subject(doc.get("sub")),
                scopes,
                ttl_s=ttl,
                now=self.clock(),
            )
        except tokens.TokenError as exc:
            raise bad_request(exc.message.split(":", 1)[0], exc.message.split(": ", 1)[-1]) from None
        return json_response(201, {"token": token, "expires_at": claims.exp, "scope": " ".join(claims.scope)})

    async def _create_call(self, request: EdgeRequest, claims: tokens.Claims) -> EdgeResponse:
        doc = read_json_object(request)
        unknown = sorted(set(doc) - {"offer"})
        if unknown:
            raise bad_request(unknown[0][:40], "unknown field (allowed: offer)")
        offer = _description(doc, "offer")
        if offer.type is not SdpType.OFFER:
            raise bad_request("offer.type", "must be 'offer'")
        where = CallerLocation.from_cf(request.cf)
        try:
            choices = self.calls.usable(rank_relays(await self.registry.get(), where))
            if not choices:
                raise NoRelayError("every healthy relay is draining or lost (relay heartbeats)")
        except NoRelayError as exc:
            raise EdgeError(503, "no_relay", str(exc), retry_after=5) from None
        except RegistryError as exc:
            raise EdgeError(503, "edge_misconfigured", f"the relay registry is invalid: {exc}") from None
        created = await self.calls.create_call(offer.sdp, claims.sub, where, choices)
        return json_response(201, created.to_json())

    async def _owned_record(self, request: EdgeRequest, claims: tokens.Claims) -> Any:
        call_id = request.path.rsplit("/", 1)[1]
        record = await self.calls.get_record(call_id)
        if record.owner != claims.sub:
            # Not "forbidden": whether someone else's call exists is not this caller's business.
            raise EdgeError(404, "unknown_call", f"call_id: no call {call_id!r}")
        return record

    async def _get_call(self, request: EdgeRequest, claims: tokens.Claims) -> EdgeResponse:
        record = await self._owned_record(request, claims)
        return json_response(200, record.public())

    async def _patch_call(self, request: EdgeRequest, claims: tokens.Claims) -> EdgeResponse:
        doc = read_json_object(request)
        keys = sorted(set(doc))
        if keys not in (["offer"], ["answer"]):
            raise bad_request(
                "body", "must hold exactly one of 'offer' (renegotiation, ICE restart) or 'answer'"
            )
        description = _description(doc, keys[0])
        if description.type.value != keys[0]:
            raise bad_request(f"{keys[0]}.type", f"must be {keys[0]!r}")
        record = await self._owned_record(request, claims)
        answer = await self.calls.renegotiate(record, description)
        body: dict[str, Any] = {"call_id": record.call_id, "state": record.state}
        if answer is not None:
            body["answer"] = answer.to_json()
        return json_response(200, body)

    async def _delete_call(self, request: EdgeRequest, claims: tokens.Claims) -> EdgeResponse:
        record = await self._owned_record(request, claims)
        closed, was_open, cleanup = await self.calls.close_call(record.call_id, "closed by the caller")
        body = {"call_id": closed.call_id, "state": closed.state, "closed_now": was_open, "cleanup": cleanup}
        body["close_reason"] = closed.close_reason
        return json_response(200, body)


def _description(doc: dict[str, Any], key: str) -> SessionDescription:
    value = doc.get(key)
    if value is None:
        raise bad_request(key, "is required: {'type': ..., 'sdp': ...}")
    try:
        return SessionDescription.from_json(value, key)
    except SchemaError as exc:
        raise bad_request(exc.field, exc.message) from None


def build_app(
    env: Mapping[str, str],
    *,
    fetch: Fetch,
    records: RecordClient,
    defer: Defer,
    ip_limiter: RateLimiter,
    token_limiter: RateLimiter,
    registry_loader: Loader | None = None,
    clock: Callable[[], float] = time.time,
    watches: WatchClient | None = None,
) -> EdgeApp:
    """One app from an environment and the runtime's I/O; raises ``ConfigError`` naming a bad setting.

    ``watches``: the per-relay liveness objects (edge/relay_watch.py); None disables relay heartbeats
    (they answer 503) and the claim at attach."""
    config = load_config(env)
    calls = CallService(config, fetch, records, defer=defer, clock=clock, watches=watches)
    registry = CachedRegistry(config.relays_json, registry_loader)

    async def rank(where: CallerLocation) -> list[Choice]:
        return rank_relays(await registry.get(), where)

    calls.ranker = rank
    return EdgeApp(config, calls, registry, ip_limiter, token_limiter, clock)
