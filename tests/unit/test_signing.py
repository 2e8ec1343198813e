"""Edge → relay request signatures: valid, unsigned, forged, stale, replayed, rotated keys."""

from __future__ import annotations

import pytest
from hypothesis import given
from hypothesis import strategies as st

from splitrelay.contract.signing import (
    NONCE_HEADER,
    SIGNATURE_HEADER,
    TIMESTAMP_HEADER,
    ReplayCache,
    SignatureError,
    Verifier,
    sign_headers,
)

KEY = b"k" * 32
OTHER = b"o" * 32
NOW = 1_800_000_000.0


def verifier(**kw: object) -> Verifier:
    return Verifier(keys={"default": KEY}, clock=lambda: NOW, **kw)  # type: ignore[arg-type]


def test_valid_request_verifies_and_returns_key_id() -> None:
    h = sign_headers(KEY, "POST", "/v1/calls?x=1", b'{"a":1}', now=NOW)
    assert verifier().verify("POST", "/v1/calls?x=1", b'{"a":1}', h) == "default"


def test_header_names_are_case_insensitive() -> None:
    h = {k.upper(): v for k, v in sign_headers(KEY, "GET", "/v1/calls", b"", now=NOW).items()}
    assert verifier().verify("GET", "/v1/calls", b"", h) == "default"


@pytest.mark.parametrize("missing", [SIGNATURE_HEADER, TIMESTAMP_HEADER, NONCE_HEADER])
def test_unsigned_request_names_the_missing_header(missing: str) -> None:
    h = sign_headers(KEY, "GET", "/p", b"", now=NOW)
    del h[missing]
    with pytest.raises(SignatureError, match=missing):
        verifier().verify("GET", "/p", b"", h)


@pytest.mark.parametrize(
    ("method", "path", "body"),
    [("PUT", "/p", b"x"), ("POST", "/q", b"x"), ("POST", "/p", b"y"), ("POST", "/p?z=1", b"x")],
)
def test_any_change_to_method_path_or_body_breaks_the_signature(method: str, path: str, body: bytes) -> None:
    h = sign_headers(KEY, "POST", "/p", b"x", now=NOW)
    with pytest.raises(SignatureError, match="bad signature"):
        verifier().verify(method, path, body, h)


def test_wrong_key_is_rejected() -> None:
    h = sign_headers(OTHER, "POST", "/p", b"", now=NOW)
    with pytest.raises(SignatureError, match="bad signature"):
        verifier().verify("POST", "/p", b"", h)


@pytest.mark.parametrize("skew", [-61, 61, -3600])
def test_stale_or_future_timestamp_is_rejected_with_the_window(skew: int) -> None:
    h = sign_headers(KEY, "POST", "/p", b"", now=NOW + skew)
    with pytest.raises(SignatureError, match="window is ±60 s"):
        verifier().verify("POST", "/p", b"", h)


def test_timestamp_at_the_edge_of_the_window_is_accepted() -> None:
    h = sign_headers(KEY, "POST", "/p", b"", now=NOW - 60)
    assert verifier().verify("POST", "/p", b"", h) == "default"


def test_replayed_request_is_rejected() -> None:
    v = verifier()
    h = sign_headers(KEY, "POST", "/p", b"", now=NOW)
    v.verify("POST", "/p", b"", h)
    with pytest.raises(SignatureError, match="replayed"):
        v.verify("POST", "/p", b"", h)


def test_forged_request_does_not_burn_the_nonce() -> None:
    v = verifier()
    h = sign_headers(KEY, "POST", "/p", b"", now=NOW)
    forged = dict(h, **{SIGNATURE_HEADER: "v1=" + "0" * 64})
    with pytest.raises(SignatureError, match="bad signature"):
        v.verify("POST", "/p", b"", forged)
    assert v.verify("POST", "/p", b"", h) == "default"


def test_key_rotation_accepts_both_key_ids() -> None:
    v = Verifier(keys={"old": KEY, "new": OTHER}, clock=lambda: NOW)
    assert v.verify("GET", "/p", b"", sign_headers(OTHER, "GET", "/p", b"", key_id="new", now=NOW)) == "new"
    with pytest.raises(SignatureError, match="unknown key id"):
        v.verify("GET", "/p", b"", sign_headers(KEY, "GET", "/p", b"", key_id="gone", now=NOW))


def test_malformed_headers_get_clear_reasons() -> None:
    h = sign_headers(KEY, "GET", "/p", b"", now=NOW)
    with pytest.raises(SignatureError, match="integer Unix seconds"):
        verifier().verify("GET", "/p", b"", dict(h, **{TIMESTAMP_HEADER: "soon"}))
    with pytest.raises(SignatureError, match="v1=<hex>"):
        verifier().verify("GET", "/p", b"", dict(h, **{SIGNATURE_HEADER: "sha1:abc"}))
    with pytest.raises(SignatureError, match="longer than 64"):
        verifier().verify("GET", "/p", b"", dict(h, **{NONCE_HEADER: "n" * 65}))


def test_short_keys_are_refused_without_echoing_them() -> None:
    with pytest.raises(ValueError, match="at least 32 bytes") as err:
        sign_headers(b"hunter2", "GET", "/", b"")
    assert "hunter2" not in str(err.value)
    with pytest.raises(ValueError, match="at least 32 bytes"):
        Verifier(keys={"default": b"short"})


def test_secrets_never_appear_in_errors_or_repr() -> None:
    v = verifier()
    assert KEY.decode() not in repr(v)
    h = sign_headers(OTHER, "POST", "/p", b"", now=NOW)
    with pytest.raises(SignatureError) as err:
        v.verify("POST", "/p", b"", h)
    assert KEY.decode() not in str(err.value) and OTHER.decode() not in str(err.value)


def test_replay_cache_is_bounded_and_evicts_expired() -> None:
    cache = ReplayCache(max_entries=3)
    for i in range(3):
        cache.add(f"n{i}", expires_at=10, now=0)
    with pytest.raises(SignatureError, match="replay cache full"):
        cache.add("n3", expires_at=10, now=5)
    cache.add("n3", expires_at=30, now=11)  # the first three have expired and are evicted
    assert len(cache) == 1


@given(
    body=st.binary(max_size=512),
    path=st.text(min_size=1, max_size=64),
    method=st.sampled_from(["GET", "POST"]),
)
def test_sign_then_verify_round_trips_for_any_body(body: bytes, path: str, method: str) -> None:
    v = verifier()
    assert v.verify(method, path, body, sign_headers(KEY, method, path, body, now=NOW)) == "default"
