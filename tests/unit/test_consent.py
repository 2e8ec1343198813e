"""relay/media/consent.py against aioice's own STUN code: the same bytes out, the same messages taken."""

from __future__ import annotations

import asyncio
import random
import struct
from dataclasses import replace

import aioice.stun
import pytest
from aioice.candidate import candidate_priority

from splitrelay.relay.media.consent import (
    ConsentCredentials,
    ConsentFreshness,
    binding_request,
    binding_success,
    integrity_ok,
    read_stun,
)

CREDS = ConsentCredentials(
    local_ufrag="w0+abcd",
    local_password="local-password-22-chars",
    remote_ufrag="Rm0t",
    remote_password="remote-password-22-chr",
    controlling=False,
    tie_breaker=0x1122334455667788,
    priority=candidate_priority(1, "prflx"),
    interval_s=5.0,
    max_failures=6,
)
ADDR = ("127.0.0.1", 40000)


def _aioice_request(txid: bytes, creds: ConsentCredentials, **extra: object) -> bytes:
    """What aioice's query_consent sends (build_request, then protocol.request signs it)."""
    msg = aioice.stun.Message(
        message_method=aioice.stun.Method.BINDING,
        message_class=aioice.stun.Class.REQUEST,
        transaction_id=txid,
    )
    msg.attributes["USERNAME"] = f"{creds.remote_ufrag}:{creds.local_ufrag}"
    msg.attributes["PRIORITY"] = creds.priority
    role = "ICE-CONTROLLING" if creds.controlling else "ICE-CONTROLLED"
    msg.attributes[role] = creds.tie_breaker
    for name, value in extra.items():
        msg.attributes[name] = value
    msg.add_message_integrity(creds.remote_password.encode())
    return bytes(msg)


def _aioice_response(txid: bytes, addr: tuple[str, int], key: bytes) -> bytes:
    """What aioice's request_received answers."""
    msg = aioice.stun.Message(
        message_method=aioice.stun.Method.BINDING,
        message_class=aioice.stun.Class.RESPONSE,
        transaction_id=txid,
    )
    msg.attributes["XOR-MAPPED-ADDRESS"] = addr
    msg.add_message_integrity(key)
    return bytes(msg)


@pytest.mark.parametrize("controlling", [False, True])
def test_our_consent_check_is_byte_for_byte_aioices(controlling: bool) -> None:
    rng = random.Random(7)
    for _ in range(50):
        txid = rng.randbytes(12)
        creds = replace(CREDS, controlling=controlling, tie_breaker=rng.getrandbits(64))
        assert binding_request(txid, creds) == _aioice_request(txid, creds)


@pytest.mark.parametrize(
    "addr", [("127.0.0.1", 1), ("203.0.113.9", 65535), ("::1", 5000), ("2001:db8::42", 443)]
)
def test_our_consent_answer_is_byte_for_byte_aioices(addr: tuple[str, int]) -> None:
    rng = random.Random(addr[1])
    for _ in range(20):
        txid = rng.randbytes(12)
        key = rng.randbytes(rng.randrange(1, 40))
        ours = binding_success(txid, addr, key)
        assert ours == _aioice_response(txid, addr, key)
        parsed = aioice.stun.parse_message(ours)  # and aioice reads it back, integrity and all
        assert parsed.attributes["XOR-MAPPED-ADDRESS"] == addr and parsed.check_message_integrity(key)


def test_read_stun_agrees_with_aioices_parser_on_signed_messages_and_refuses_the_rest() -> None:
    rng = random.Random(3)
    txid = rng.randbytes(12)
    request = _aioice_request(txid, CREDS, **{"USE-CANDIDATE": None})
    view = read_stun(request)
    assert view is not None and view.txid == txid and view.kind == 0x0001
    assert view.username == f"{CREDS.remote_ufrag}:{CREDS.local_ufrag}".encode()
    assert view.use_candidate and view.controlled and not view.controlling
    assert integrity_ok(request, view, CREDS.remote_password.encode())
    assert not integrity_ok(request, view, b"wrong")
    # A flipped fingerprint, a truncation, a wrong length field, trailing bytes: not taken here.
    bad_crc = request[:-1] + bytes([request[-1] ^ 1])
    assert read_stun(bad_crc) is None
    assert read_stun(request[:-4]) is None
    assert read_stun(request[:2] + struct.pack("!H", len(request)) + request[4:]) is None
    assert read_stun(request + b"\0\0\0\0") is None
    # Without MESSAGE-INTEGRITY (an unsigned binding request): not taken.
    unsigned = aioice.stun.Message(
        message_method=aioice.stun.Method.BINDING,
        message_class=aioice.stun.Class.REQUEST,
        transaction_id=txid,
    )
    assert read_stun(bytes(unsigned)) is None
    # Random bytes never raise.
    for _ in range(2000):
        data = bytes(rng.getrandbits(8) for _ in range(rng.randrange(0, 120)))
        read_stun(data)
        read_stun(b"\x00\x01" + struct.pack("!H", len(data)) + b"\x21\x12\xa4\x42" + txid + data)


class _Sent:
    def __init__(self) -> None:
        self.datagrams: list[tuple[bytes, tuple[str, int]]] = []

    def __call__(self, data: bytes, addr: tuple[str, int]) -> None:
        self.datagrams.append((data, addr))


async def test_answers_only_the_steady_state_check_and_leaves_the_rest_to_aioice() -> None:
    sent = _Sent()
    expired: list[bool] = []
    consent = ConsentFreshness(CREDS, ADDR, sent, lambda: expired.append(True))
    try:
        # The peer's check: USERNAME ours:theirs, signed with our password (the peer is controlling).
        peer = replace(
            CREDS,
            local_ufrag=CREDS.remote_ufrag,
            remote_ufrag=CREDS.local_ufrag,
            remote_password=CREDS.local_password,
            controlling=True,
        )
        txid = bytes(range(12))
        check = binding_request(txid, peer)
        assert consent.handle(check, ADDR)
        assert sent.datagrams == [(_aioice_response(txid, ADDR, CREDS.local_password.encode()), ADDR)]
        assert consent.handle(check, (ADDR[0], ADDR[1], 0, 0))  # an IPv6-style 4-tuple of the same address
        assert consent.requests_answered == 2
        sent.datagrams.clear()
        refused = [
            (check, ("127.0.0.1", 40001)),  # another address: a new path is aioice's business
            (_aioice_request(txid, peer, **{"USE-CANDIDATE": None}), ADDR),  # a nomination
            (binding_request(txid, replace(peer, controlling=False)), ADDR),  # conflict
            (binding_request(txid, replace(peer, remote_password="x" * 22)), ADDR),
            (binding_request(txid, replace(peer, remote_ufrag="other")), ADDR),
            (binding_success(txid, ADDR, CREDS.remote_password.encode()), ADDR),  # not our transaction
        ]
        for data, addr in refused:
            assert not consent.handle(data, addr)
        assert sent.datagrams == [] and consent.requests_answered == 2
    finally:
        consent.close()


async def test_our_checks_go_out_and_an_unanswered_run_expires_consent() -> None:
    sent = _Sent()
    expired: list[bool] = []
    fast = replace(CREDS, interval_s=0.02, max_failures=3)
    consent = ConsentFreshness(fast, ADDR, sent, lambda: expired.append(True))
    try:
        for _ in range(100):  # answer every check for a while: consent holds
            await asyncio.sleep(0.005)
            if sent.datagrams:
                data, addr = sent.datagrams.pop()
                assert addr == ADDR
                view = read_stun(data)
                assert view is not None and integrity_ok(data, view, fast.remote_password.encode())
                answer = binding_success(view.txid, ADDR, fast.remote_password.encode())
                assert consent.handle(answer, ADDR)
                assert not consent.handle(answer, ADDR)  # answered once only
        assert consent.checks_sent >= 5 and consent.answers_received == consent.checks_sent
        assert not expired and consent.failures == 0
        # An answer signed with the wrong key is not an answer.
        for _ in range(100):
            await asyncio.sleep(0.005)
            if sent.datagrams:
                data, _ = sent.datagrams.pop()
                view = read_stun(data)
                assert view is not None
                assert not consent.handle(binding_success(view.txid, ADDR, b"forged"), ADDR)
            if expired:
                break
        assert expired == [True] and consent.expired
        checks = consent.checks_sent
        await asyncio.sleep(0.1)
        assert consent.checks_sent == checks  # nothing more is sent once expired
    finally:
        consent.close()
