"""The shared-port demultiplexer's rules without a socket (relay/media/demux.py).

STUN is built by aioice's own encoder, so the demultiplexer's USERNAME and MESSAGE-INTEGRITY reading is
checked against the implementation that will answer the same packets.
"""

from __future__ import annotations

import asyncio
import secrets
import time
from collections.abc import Callable

import aioice.ice
import pytest
from aioice import stun
from hypothesis import example, given, settings
from hypothesis import strategies as st

from splitrelay.relay.media.demux import (
    Demux,
    DemuxLimits,
    dtls_records,
    stun_has_attribute,
    stun_integrity_ok,
    stun_username_and_integrity,
)

Address = tuple[str, int]
CALLER: Address = ("198.51.100.7", 50000)
OTHER: Address = ("203.0.113.9", 40000)
PASSWORD = "p" * 22
SRTP = b"\x80\x6f" + bytes(40)
SRTCP = b"\x80\xc8" + bytes(40)
DTLS = b"\x16\xfe\xfd" + bytes(40)


def binding_request(
    ufrag: str, password: str, *, remote: str = "caller", transaction_id: bytes | None = None
) -> bytes:
    """An ICE connectivity check as a peer sends it: USERNAME local:remote, MESSAGE-INTEGRITY, FINGERPRINT."""
    message = stun.Message(
        message_method=stun.Method.BINDING,
        message_class=stun.Class.REQUEST,
        transaction_id=transaction_id or secrets.token_bytes(12),
    )
    message.attributes["USERNAME"] = f"{ufrag}:{remote}"
    message.attributes["PRIORITY"] = 1853824767
    message.attributes["ICE-CONTROLLING"] = 5
    message.add_message_integrity(password.encode())
    return bytes(message)


def binding_response(transaction_id: bytes, *, error: bool = False) -> bytes:
    message = stun.Message(
        message_method=stun.Method.BINDING,
        message_class=stun.Class.ERROR if error else stun.Class.RESPONSE,
        transaction_id=transaction_id,
    )
    message.attributes["XOR-MAPPED-ADDRESS"] = ("192.0.2.1", 3478)
    message.add_message_integrity(b"remote-password-xxxxxxxx")
    return bytes(message)


class Recorder(asyncio.DatagramProtocol):
    """A call's protocol: what the demultiplexer handed it."""

    def __init__(self, *, fail: bool = False) -> None:
        self.got: list[tuple[bytes, Address]] = []
        self.fail = fail

    def datagram_received(self, data: bytes, addr: Address) -> None:
        if self.fail:
            raise RuntimeError("a broken call")
        self.got.append((data, addr))


class Net:
    """A Demux whose sends are recorded."""

    def __init__(
        self, limits: DemuxLimits | None = None, worker: int = 0, clock: Callable[[], float] = time.monotonic
    ) -> None:
        self.sent: list[tuple[bytes, Address]] = []
        self.demux = Demux(
            lambda data, addr: self.sent.append((data, addr)), worker=worker, limits=limits, clock=clock
        )

    def call(self, *, fail: bool = False) -> tuple[str, Recorder]:
        ufrag = self.demux.mint_ufrag()
        protocol = Recorder(fail=fail)
        self.demux.register(ufrag, PASSWORD, protocol)
        return ufrag, protocol


def test_stun_reading_matches_aioice() -> None:
    data = binding_request("w0+abcd", PASSWORD)
    username, offset = stun_username_and_integrity(data)
    assert username == b"w0+abcd:caller" and offset is not None
    assert stun_integrity_ok(data, offset, PASSWORD.encode())
    assert not stun_integrity_ok(data, offset, b"another-password-123456")
    parsed = stun.parse_message(data)
    assert parsed.check_message_integrity(PASSWORD.encode())


def test_a_check_learns_the_flow_and_media_follows_it() -> None:
    net = Net()
    ufrag, call = net.call()
    net.demux.datagram_received(SRTP, CALLER)  # before any STUN: nobody's
    assert call.got == [] and net.demux.unknown == 1
    check = binding_request(ufrag, PASSWORD)
    net.demux.datagram_received(check, CALLER)
    for data in (DTLS, SRTP, SRTCP):
        net.demux.datagram_received(data, CALLER)
    net.demux.datagram_received(SRTP, OTHER)  # same call, unlearned address
    assert call.got == [(check, CALLER), (DTLS, CALLER), (SRTP, CALLER), (SRTCP, CALLER)]
    stats = net.demux.stats()
    assert (stats.routed_by_ufrag, stats.routed_by_flow, stats.unknown, stats.flows) == (1, 3, 2, 1)
    assert net.demux.flow_owner(CALLER) == ufrag


def test_calls_are_kept_apart() -> None:
    net = Net()
    (u1, c1), (u2, c2) = net.call(), net.call()
    net.demux.datagram_received(binding_request(u1, PASSWORD), CALLER)
    net.demux.datagram_received(binding_request(u2, PASSWORD), OTHER)
    net.demux.datagram_received(b"\x80\x6f one", CALLER)
    net.demux.datagram_received(b"\x80\x6f two", OTHER)
    assert [d for d, _ in c1.got][1:] == [b"\x80\x6f one"]
    assert [d for d, _ in c2.got][1:] == [b"\x80\x6f two"]


@pytest.mark.parametrize(
    "forge",
    [
        lambda u: binding_request(u, "wrong-password-0123456789"),
        lambda u: binding_request(u, PASSWORD)[:-32] + bytes(32),  # MESSAGE-INTEGRITY and FINGERPRINT zeroed
        lambda u: binding_request(u, PASSWORD, remote="x")[:-1] + b"\x00",  # FINGERPRINT only: still forged?
    ],
)
def test_forged_checks_are_dropped_and_teach_nothing(forge: object) -> None:
    net = Net()
    ufrag, call = net.call()
    data = forge(ufrag)  # type: ignore[operator]
    net.demux.datagram_received(data, CALLER)
    _, offset = stun_username_and_integrity(data)
    intact = offset is not None and stun_integrity_ok(data, offset, PASSWORD.encode())
    if intact:  # a damaged FINGERPRINT is after the integrity: routed, and aioice refuses it
        assert call.got == [(data, CALLER)]
    else:
        assert call.got == [] and net.demux.forged == 1 and net.demux.flow_owner(CALLER) is None


def test_a_check_without_integrity_is_forged() -> None:
    net = Net()
    ufrag, call = net.call()
    message = stun.Message(stun.Method.BINDING, stun.Class.REQUEST, transaction_id=bytes(12))
    message.attributes["USERNAME"] = f"{ufrag}:caller"
    net.demux.datagram_received(bytes(message), CALLER)
    assert call.got == [] and net.demux.forged == 1


def test_unknown_and_foreign_ufrags_are_counted_apart() -> None:
    net = Net(worker=2)
    net.call()
    net.demux.datagram_received(binding_request("w2+nosuchcall", PASSWORD), CALLER)
    net.demux.datagram_received(binding_request("w7+abcdefgh", PASSWORD), CALLER)
    net.demux.datagram_received(binding_request("abcd", PASSWORD), CALLER)
    stats = net.demux.stats()
    assert (stats.unknown, stats.foreign_worker, stats.flows) == (2, 1, 0)


def test_responses_find_the_call_that_asked() -> None:
    net = Net()
    (u1, c1), (u2, c2) = net.call(), net.call()
    call1 = net.demux._calls[u1]
    check = binding_request("remote", "r" * 22, remote=u1)
    net.demux.send_from(call1, check, CALLER)
    assert net.sent == [(check, CALLER)]
    txid = check[8:20]
    net.demux.datagram_received(binding_response(txid), OTHER)  # from elsewhere: not the answer
    assert c1.got == [] and net.demux.unknown == 1
    response = binding_response(txid)
    net.demux.datagram_received(response, CALLER)
    net.demux.datagram_received(response, CALLER)  # a duplicate finds no pending transaction
    assert c1.got == [(response, CALLER)] and c2.got == []
    assert net.demux.flow_owner(CALLER) == u1  # an answered check teaches the flow (ICE-lite peers)
    # A STUN-server request (no USERNAME) is routed back but teaches no flow.
    plain = stun.Message(stun.Method.BINDING, stun.Class.REQUEST, transaction_id=bytes(range(12)))
    net.demux.send_from(net.demux._calls[u2], bytes(plain), OTHER)
    net.demux.datagram_received(binding_response(bytes(range(12)), error=True), OTHER)
    assert len(c2.got) == 1 and net.demux.flow_owner(OTHER) is None


def test_a_live_flow_is_shared_by_another_calls_check_and_a_quiet_one_moves() -> None:
    """Another call's authenticated check from a held address (an SFU's one address) shares it: both
    calls keep it, and its media then goes by keys. Once every holder has been quiet for flow_hold_s (a
    gone caller), the address moves instead."""
    now = [1000.0]
    net = Net(DemuxLimits(flow_hold_s=30.0), clock=lambda: now[0])
    (u1, _), (u2, _), (u3, _) = net.call(), net.call(), net.call()
    seen: list[Address] = []
    net.demux.on_shared = seen.append
    net.demux.datagram_received(binding_request(u1, PASSWORD), CALLER)
    now[0] += 29
    net.demux.datagram_received(binding_request(u2, PASSWORD), CALLER)  # 29 s after: shared
    assert seen == [CALLER] and net.demux.is_shared(CALLER) and not net.demux.is_shared(OTHER)
    assert net.demux.flow_calls(CALLER) == [u1, u2] and net.demux.flow_owner(CALLER) is None
    assert (net.demux.flows_shared, net.demux.flow_conflicts, net.demux.stats().flows) == (1, 0, 2)
    net.demux.datagram_received(binding_request(u3, PASSWORD), OTHER)
    now[0] += 31
    net.demux.datagram_received(binding_request(u1, PASSWORD), OTHER)  # u3 quiet for 31 s: it moves
    assert net.demux.flow_owner(OTHER) == u1 and net.demux.flows_moved == 1
    assert net.demux._calls[u3].flows == []
    net.demux.unregister(net.demux._calls[u1])  # CALLER is u2's alone again
    assert net.demux.flow_owner(CALLER) == u2 and net.demux.stats().flows == 1


def test_unregister_forgets_the_call_and_its_flows() -> None:
    net = Net()
    ufrag, call = net.call()
    net.demux.datagram_received(binding_request(ufrag, PASSWORD), CALLER)
    net.demux.unregister(net.demux._calls[ufrag])
    net.demux.datagram_received(SRTP, CALLER)
    net.demux.datagram_received(binding_request(ufrag, PASSWORD), CALLER)
    assert len(call.got) == 1 and net.demux.stats().flows == 0 and net.demux.unknown == 2


def test_register_refuses_foreign_duplicate_and_over_the_limit() -> None:
    net = Net(DemuxLimits(max_calls=2))
    ufrag, _ = net.call()
    with pytest.raises(OSError, match="not minted by this shared port"):
        net.demux.register("abcd", PASSWORD, Recorder())
    with pytest.raises(OSError, match="already has a candidate"):
        net.demux.register(ufrag, PASSWORD, Recorder())
    net.call()
    with pytest.raises(OSError, match="shared port full: 2 calls"):
        net.call()


def test_flow_tables_are_bounded_and_relearned() -> None:
    net = Net(DemuxLimits(max_flows_per_call=2, max_flows=3))
    (u1, c1), (u2, _) = net.call(), net.call()
    for port in range(4):  # a caller checking from four addresses: the call keeps its newest two
        net.demux.datagram_received(binding_request(u1, PASSWORD), ("198.51.100.7", 1000 + port))
    assert net.demux._calls[u1].flows == [("198.51.100.7", 1002), ("198.51.100.7", 1003)]
    for port in range(2):
        net.demux.datagram_received(binding_request(u2, PASSWORD), ("203.0.113.9", 2000 + port))
    assert net.demux.stats().flows == 3 and net.demux.flows_evicted == 3  # 2 per call, 1 globally
    net.demux.datagram_received(SRTP, ("198.51.100.7", 1002))  # the globally oldest, evicted
    assert net.demux.unknown == 1
    net.demux.datagram_received(binding_request(u1, PASSWORD), ("198.51.100.7", 1002))  # soft state
    net.demux.datagram_received(SRTP, ("198.51.100.7", 1002))
    assert c1.got[-1] == (SRTP, ("198.51.100.7", 1002))
    assert net.demux.stats().flows == 3


def test_transactions_are_bounded() -> None:
    net = Net(DemuxLimits(max_transactions=4))
    ufrag, call = net.call()
    checks = [binding_request("remote", "r" * 22, remote=ufrag) for _ in range(6)]
    for check in checks:
        net.demux.send_from(net.demux._calls[ufrag], check, CALLER)
    assert net.demux.stats().transactions == 4 and net.demux.transactions_evicted == 2
    net.demux.datagram_received(binding_response(checks[0][8:20]), CALLER)  # evicted: unknown
    net.demux.datagram_received(binding_response(checks[5][8:20]), CALLER)
    assert len(call.got) == 1 and net.demux.unknown == 1


def test_a_call_that_raises_is_counted_and_others_go_on() -> None:
    net = Net()
    (u1, _), (u2, c2) = net.call(fail=True), net.call()
    net.demux.datagram_received(binding_request(u1, PASSWORD), CALLER)
    net.demux.datagram_received(binding_request(u2, PASSWORD), OTHER)
    net.demux.datagram_received(SRTP, OTHER)
    assert net.demux.delivery_errors == 1 and len(c2.got) == 2


def test_minted_ufrags_are_valid_unique_and_labelled() -> None:
    demux = Demux(lambda d, a: None, worker=12)
    ufrags = {demux.mint_ufrag() for _ in range(1000)}
    assert len(ufrags) == 1000
    for ufrag in [*list(ufrags)[:10], demux.mint_ufrag("call-42/ü x" * 5)]:
        aioice.ice.validate_username(ufrag)
        assert ufrag.startswith("w12+")
    assert demux.mint_ufrag("call-42").startswith("w12+call42+")
    with pytest.raises(ValueError, match=r"worker must be 0\.\.9999"):
        Demux(lambda d, a: None, worker=-1)
    with pytest.raises(ValueError, match=r"DemuxLimits\.max_flows_per_call must be 1\.\.64, got 0"):
        DemuxLimits(max_flows_per_call=0)
    with pytest.raises(ValueError, match=r"DemuxLimits\.flow_hold_s must be 0\.\.3600 seconds, got -1"):
        DemuxLimits(flow_hold_s=-1)


addresses = st.tuples(st.sampled_from(["198.51.100.7", "203.0.113.9", "::1"]), st.integers(1, 4))


@settings(max_examples=400, deadline=None)
@given(st.lists(st.tuples(st.binary(max_size=120), addresses), max_size=60))
def test_random_datagrams_never_raise_and_tables_stay_bounded(datagrams: list[tuple[bytes, Address]]) -> None:
    limits = DemuxLimits(max_calls=4, max_flows_per_call=2, max_flows=3, max_transactions=2)
    net = Net(limits)
    calls = [net.call() for _ in range(3)]
    for data, addr in datagrams:
        net.demux.datagram_received(data, addr)
    stats = net.demux.stats()
    routed = stats.routed_by_ufrag + stats.routed_by_transaction + stats.routed_by_flow
    dropped = stats.unknown + stats.forged + stats.malformed + stats.foreign_worker + stats.flow_conflicts
    assert routed + dropped == stats.datagrams_in == len(datagrams)
    assert stats.flows <= limits.max_flows and stats.flows_learned == 0  # random bytes never authenticate
    assert all(call.got == [] for _, call in calls)


@settings(max_examples=400, deadline=None)
@given(st.integers(0, 10_000), st.integers(0, 7), addresses)
def test_a_damaged_check_teaches_a_flow_only_if_its_signed_part_is_intact(
    position: int, bit: int, addr: Address
) -> None:
    net = Net()
    ufrag, call = net.call()
    good = binding_request(ufrag, PASSWORD)
    data = bytearray(good)
    data[position % len(data)] ^= 1 << bit
    net.demux.datagram_received(bytes(data), addr)
    _, offset = stun_username_and_integrity(good)
    assert offset is not None
    signed_end = offset + 24  # through MESSAGE-INTEGRITY
    if net.demux.flow_owner(addr) is not None:
        assert bytes(data[:signed_end]) == good[:signed_end]
        assert call.got == [(bytes(data), addr)]
    elif position % len(data) < signed_end:
        assert call.got == []


def test_the_global_bound_forgets_the_flow_refreshed_longest_ago() -> None:
    net = Net(DemuxLimits(max_flows=2))
    (u1, _), (u2, _), (u3, _) = net.call(), net.call(), net.call()
    net.demux.datagram_received(binding_request(u1, PASSWORD), CALLER)
    net.demux.datagram_received(binding_request(u2, PASSWORD), OTHER)
    net.demux.datagram_received(binding_request(u1, PASSWORD), CALLER)  # refreshed: now the youngest
    net.demux.datagram_received(binding_request(u3, PASSWORD), ("192.0.2.5", 7))
    assert net.demux.flow_owner(CALLER) == u1 and net.demux.flow_owner(OTHER) is None
    assert net.demux.flows_evicted == 1


def test_an_answer_from_a_held_address_shares_it_and_the_per_remote_bound_refuses() -> None:
    net = Net(DemuxLimits(max_calls_per_remote=2))
    (u1, _), (u2, c2), (u3, c3) = net.call(), net.call(), net.call()
    net.demux.datagram_received(binding_request(u1, PASSWORD), CALLER)
    for ufrag in (u2, u3):
        check = binding_request("remote", "r" * 22, remote=ufrag)
        net.demux.send_from(net.demux._calls[ufrag], check, CALLER)
        net.demux.datagram_received(binding_response(check[8:20]), CALLER)
    assert len(c2.got) == 1 and c3.got == [] and net.demux.flow_conflicts == 1
    assert net.demux.flow_calls(CALLER) == [u1, u2]


# --- remote addresses several calls share (an anycast SFU) -----------------------------------------

SFU: Address = ("192.0.2.80", 3478)


def srtp(ssrc: int, tag: int, seq: int = 1) -> bytes:
    """An SRTP-shaped datagram whose 'keys' are ``tag`` (what a FakeClaim authenticates)."""
    return (
        b"\x80\x6f" + seq.to_bytes(2, "big") + bytes(4) + ssrc.to_bytes(4, "big") + bytes([tag]) + bytes(20)
    )


def srtcp(ssrc: int, tag: int) -> bytes:
    return b"\x80\xc8\x00\x06" + ssrc.to_bytes(4, "big") + bytes(4) + bytes([tag]) + bytes(20)


def dtls(epoch: int, handshake_type: int = 2, content: int = 22) -> bytes:
    """A DTLS 1.2 record: epoch 0 carries the plain handshake (1: ClientHello), >= 1 is encrypted."""
    head = bytes([content]) + b"\xfe\xfd" + epoch.to_bytes(2, "big") + bytes(6) + b"\x00\x10"
    return head + bytes([handshake_type]) + bytes(15)


CCS = b"\x14\xfe\xfd\x00\x00" + bytes(6) + b"\x00\x01\x01"
ALERT = dtls(1, content=21)  # an encrypted alert (close_notify)


def record(epoch: int, seq: int, body: bytes, content: int = 22) -> bytes:
    """One DTLS 1.2 record with its sequence number."""
    head = bytes([content]) + b"\xfe\xfd" + epoch.to_bytes(2, "big") + seq.to_bytes(6, "big")
    return head + len(body).to_bytes(2, "big") + body


def message(kind: int, payload: bytes, message_seq: int) -> bytes:
    """A handshake message as one whole fragment (offset 0)."""
    size = len(payload).to_bytes(3, "big")
    return bytes([kind]) + size + message_seq.to_bytes(2, "big") + b"\x00\x00\x00" + size + payload


def final_flight(key: bytes, first_seq: int = 1, *, cert: bytes = b"one-certificate") -> bytes:
    """A DTLS 1.2 client's final flight in one datagram: Certificate, ClientKeyExchange (``key``: its
    ephemeral public key), CertificateVerify, ChangeCipherSpec, Finished (epoch 1). A retransmission
    repeats the messages under new record numbers (``first_seq``)."""
    return (
        record(0, first_seq, message(11, cert, 1))
        + record(0, first_seq + 1, message(16, key, 2))
        + record(0, first_seq + 2, message(15, b"signature-over-" + key, 3))
        + record(0, first_seq + 3, b"\x01", content=20)
        + record(1, first_seq // 5, bytes(40))
    )


def finish_as_server(net: Net, call_ufrag: str, key: bytes) -> None:
    """``call_ufrag`` holds the SFU's address and finishes its handshake there as DTLS server: the SFU's
    ClientHello, our flight, the SFU's final flight (key exchange ``key``), our CCS+Finished."""
    demux = net.demux
    call = demux._calls[call_ufrag]
    assert demux.turn_holder(SFU) == call_ufrag
    demux.datagram_received(dtls(0, handshake_type=1), SFU)
    demux.send_from(call, dtls(0), SFU)
    demux.datagram_received(final_flight(key), SFU)
    demux.send_from(call, CCS + dtls(1), SFU)
    assert call.settled and demux.turn_holder(SFU) != call_ufrag


class FakeClaim:
    """A call's fast path as the demultiplexer sees it: takes a datagram only under its own 'keys' (the
    tag byte), and a replay of one it took is refused; a refusal changes nothing (as SRTP's does)."""

    def __init__(self, tag: int) -> None:
        self.tag = tag
        self.took: list[bytes] = []
        self.offered = 0

    def __call__(self, data: bytes, addr: Address) -> bool:
        self.offered += 1
        if len(data) <= 12 or data[12] != self.tag or data in self.took:
            return False
        self.took.append(data)
        return True


def media(recorder: Recorder) -> list[bytes]:
    """What a call was handed raw, STUN left out."""
    return [data for data, _ in recorder.got if data and data[0] > 3]


def check_from(ufrag: str) -> bytes:
    """A check the call sends to its remote (USERNAME remote:local)."""
    return binding_request("remote", "r" * 22, remote=ufrag)


def shared_calls(net: Net, count: int) -> list[tuple[str, Recorder]]:
    """``count`` calls that all learned SFU (one authenticated check each)."""
    calls = [net.call() for _ in range(count)]
    for ufrag, _ in calls:
        net.demux.datagram_received(binding_request(ufrag, PASSWORD), SFU)
    assert net.demux.flow_calls(SFU) == [u for u, _ in calls]
    return calls


def test_media_from_a_shared_address_goes_by_the_keys_that_take_it() -> None:
    net = Net()
    (u1, c1), (u2, c2) = shared_calls(net, 2)
    claims = [FakeClaim(1), FakeClaim(2)]
    for ufrag, claim in zip((u1, u2), claims, strict=True):
        net.demux._calls[ufrag].media_claim = claim
    demux = net.demux
    demux.datagram_received(srtp(0xA, tag=1), SFU)  # new SSRC: offered newest first, u2 refuses
    demux.datagram_received(srtp(0xB, tag=2), SFU)
    demux.datagram_received(srtp(0xA, tag=1, seq=2), SFU)  # by the learned (address, SSRC)
    demux.datagram_received(srtcp(0xB, tag=2), SFU)
    assert claims[0].took == [srtp(0xA, 1), srtp(0xA, 1, 2)] and claims[1].took == [
        srtp(0xB, 2),
        srtcp(0xB, 2),
    ]
    assert (demux.routed_by_claim, demux.routed_by_ssrc) == (2, 2)
    # Forged (no call's keys) and replayed datagrams: taken by nobody, learn nothing, counted.
    for forged in (srtp(0xA, tag=9), srtp(0xC, tag=9), srtp(0xA, tag=1)):
        demux.datagram_received(forged, SFU)
    assert demux.unclaimed == 3 and len(claims[0].took) == 2 and len(claims[1].took) == 2
    assert demux._shared[SFU].ssrcs == {0xA: demux._calls[u1], 0xB: demux._calls[u2]}
    # A call whose SSRC another call's keys take (an SFU reusing an SSRC across sessions): re-learned.
    demux.datagram_received(srtp(0xA, tag=2, seq=7), SFU)
    assert claims[1].took[-1] == srtp(0xA, 2, 7) and demux._shared[SFU].ssrcs[0xA] is demux._calls[u2]
    assert media(c1) == [] and media(c2) == []  # media went through the claims, never raw
    demux.datagram_received(b"\x80\x6f\x00\x01", SFU)  # too short for an SSRC
    assert demux.malformed == 1


def test_new_ssrcs_are_offered_within_a_bound_and_a_rate() -> None:
    now = [0.0]
    net = Net(DemuxLimits(max_claim_trials=2, claim_trials_per_s=4), clock=lambda: now[0])
    calls = shared_calls(net, 4)
    claims = [FakeClaim(i) for i in range(4)]
    for (ufrag, _), claim in zip(calls, claims, strict=True):
        net.demux._calls[ufrag].media_claim = claim
    net.demux.datagram_received(srtp(0x1, tag=0), SFU)  # the oldest call: 2 trials (newest first) miss
    assert net.demux.unclaimed == 1 and [c.offered for c in claims] == [0, 0, 1, 1]
    now[0] += 1
    net.demux.datagram_received(srtp(0x1, tag=0, seq=2), SFU)  # the next two calls: found
    assert claims[0].took == [srtp(0x1, 0, 2)] and net.demux.routed_by_claim == 1
    for seq in range(3, 9):  # a flood of SSRCs nobody has: 4 trials a second, then dropped
        net.demux.datagram_received(srtp(0x100 + seq, tag=9, seq=seq), SFU)
    assert net.demux.claims_limited >= 3 and sum(c.offered for c in claims) <= 4 + 2 + 4


def test_dtls_from_a_shared_address_goes_only_to_the_call_whose_turn_it_is() -> None:
    """The first call to check toward the SFU has the turn there; another call's checks and DTLS wait
    (held, not sent) until the holder's handshake is over, so the DTLS the SFU sends is the holder's."""
    net = Net()
    (u1, c1), (u2, c2) = shared_calls(net, 2)
    demux = net.demux
    a, b = demux._calls[u1], demux._calls[u2]
    check_a, check_b = check_from(u1), check_from(u2)
    demux.send_from(a, check_a, SFU)
    demux.send_from(b, check_b, SFU)
    demux.send_from(b, check_b, SFU)  # a retransmission replaces the held copy
    assert [d for d, _ in net.sent] == [check_a] and demux.turn_holder(SFU) == u1
    assert b.held == [(check_b, SFU)] and demux.held == 2
    hello = dtls(0, handshake_type=1)
    demux.datagram_received(hello, SFU)  # the SFU's ClientHello: the holder's
    assert c1.got[-1] == (hello, SFU) and all(d != hello for d, _ in c2.got)
    demux.send_from(a, dtls(0), SFU)  # our flight, still epoch 0
    demux.send_from(a, dtls(1), SFU)  # our Finished
    assert demux.turn_holder(SFU) == u1 and not a.settled
    demux.datagram_received(dtls(1), SFU)  # theirs: both passed; a's turn is over (DTLS server or not)
    assert a.settled and demux.turn_holder(SFU) == u2
    assert [d for d, _ in net.sent][-1] == check_b and b.held == []  # b's check went out at its turn
    demux.datagram_received(hello, SFU)
    assert c2.got[-1] == (hello, SFU)
    demux.send_from(a, check_a, SFU)  # a settled call's consent checks never wait
    assert [d for d, _ in net.sent][-1] == check_a


def test_a_turn_ends_when_both_finished_passed_whatever_the_dtls_role() -> None:
    """Client or server, a call's turn passes the moment both Finished messages have passed: a muted
    remote (no media) holds no address for ``turn_settle_s`` any more."""
    now = [0.0]
    net = Net(DemuxLimits(turn_settle_s=1.5), clock=lambda: now[0])
    (u1, _), (u2, _), (u3, _) = shared_calls(net, 3)
    demux = net.demux
    a, b, c = (demux._calls[u] for u in (u1, u2, u3))
    demux.send_from(a, dtls(0, handshake_type=1), SFU)  # a is the DTLS client
    demux.send_from(b, check_from(u2), SFU)
    demux.send_from(a, dtls(1), SFU)
    demux.datagram_received(dtls(1), SFU)
    assert a.settled and demux.turn_holder(SFU) == u2  # the server finished before the client did
    demux.send_from(c, check_from(u3), SFU)
    demux.datagram_received(dtls(0, handshake_type=1), SFU)  # b is the server
    demux.datagram_received(dtls(1), SFU)
    assert demux.turn_holder(SFU) == u2
    demux.send_from(b, dtls(1), SFU)
    assert demux.turn_holder(SFU) == u3 and b.settled and c.held == []  # no settling wait


def test_a_turn_expires_and_a_closed_holder_passes_it_on() -> None:
    now = [0.0]
    net = Net(DemuxLimits(turn_hold_s=5.0), clock=lambda: now[0])
    (u1, _), (u2, _), (u3, _) = shared_calls(net, 3)
    demux = net.demux
    a, b, c = (demux._calls[u] for u in (u1, u2, u3))
    for call, ufrag in ((a, u1), (b, u2), (c, u3)):
        demux.send_from(call, check_from(ufrag), SFU)
    now[0] += 5.1  # a's set-up went quiet: b's turn
    assert demux.turn_holder(SFU) == u2 and demux.turns_expired == 1
    demux.unregister(b)  # b closes: c's turn, and b's state is gone
    assert demux.turn_holder(SFU) == u3 and c.held == [] and len(net.sent) == 3
    demux.send_from(a, check_from(u1), SFU)  # a waits behind c now
    assert a.held and demux.turn_holder(SFU) == u3
    demux.unregister(a)
    assert a.held == [] and demux.held_dropped == 1


def test_early_media_goes_to_the_call_whose_turn_it_is_and_teaches_nothing() -> None:
    """SRTP no fast path takes, from a shared address, while the holder's fast path has not attached:
    its handshake has just ended, so it is the holder's (aioice queues it; the fast path authenticates
    it when it takes over). Without a claim-less holder the same datagram is dropped."""
    net = Net()
    (u1, c1), (u2, c2), _ = shared_calls(net, 3)
    demux = net.demux
    demux._calls[u1].media_claim = FakeClaim(1)
    demux.send_from(demux._calls[u2], check_from(u2), SFU)  # u2 has the turn, no fast path yet
    demux.datagram_received(srtp(0x7, tag=2), SFU)
    assert media(c2) == [srtp(0x7, 2)] and demux.early_media == 1 and 0x7 not in demux._shared[SFU].ssrcs
    demux.unregister(demux._calls[u2])
    demux.datagram_received(srtp(0x8, tag=2), SFU)
    assert demux.unclaimed == 1 and media(c1) == []


def test_dtls_from_a_shared_address_with_no_turn_is_dropped() -> None:
    net = Net()
    shared_calls(net, 2)
    net.demux.datagram_received(dtls(1), SFU)  # a late alert: whose? nobody's turn: dropped
    assert net.demux.dtls_ambiguous == 1
    net.demux.datagram_received(DTLS, ("192.0.2.99", 1))
    assert net.demux.unknown == 1


def test_stun_server_requests_and_indications_never_wait() -> None:
    net = Net()
    (u1, _), (u2, _) = shared_calls(net, 2)
    demux = net.demux
    demux.send_from(demux._calls[u1], check_from(u1), SFU)
    plain = bytes(stun.Message(stun.Method.BINDING, stun.Class.REQUEST, transaction_id=bytes(12)))
    indication = bytes(stun.Message(stun.Method.BINDING, stun.Class.INDICATION))
    demux.send_from(demux._calls[u2], plain, SFU)
    demux.send_from(demux._calls[u2], indication, SFU)
    demux.send_from(demux._calls[u2], SRTP, SFU)
    assert [d for d, _ in net.sent][1:] == [plain, indication, SRTP] and demux.held == 0


def test_held_datagrams_are_bounded() -> None:
    net = Net(DemuxLimits(max_held=2))
    (u1, _), (u2, _) = shared_calls(net, 2)
    demux = net.demux
    demux.send_from(demux._calls[u1], check_from(u1), SFU)
    for _ in range(4):
        demux.send_from(demux._calls[u2], check_from(u2), SFU)
    assert len(demux._calls[u2].held) == 2 and demux.held_dropped == 2


@settings(max_examples=300, deadline=None)
@given(
    st.lists(
        st.tuples(
            st.sampled_from(
                [
                    "check",
                    "send_check",
                    "send_hello",
                    "send_fin",
                    "get_hello",
                    "get_fin",
                    "get_alert",
                    "get_flight",
                    "get_retrans",
                    "serve",
                    "attach",
                    "media",
                    "forged",
                    "close",
                    "tick",
                    "junk",
                ]
            ),
            st.integers(0, 3),
            st.binary(max_size=40),
        ),
        max_size=80,
    )
)
@example(  # CCS+Finished lost: the remote's final flight again while the next call's handshake runs
    events=[
        ("check", 0, b""),
        ("check", 1, b""),
        ("send_check", 0, b""),
        ("send_check", 1, b""),
        ("serve", 0, b""),
        ("get_hello", 0, b""),
        ("get_retrans", 0, b""),
        ("serve", 0, b""),
        ("get_retrans", 1, b""),
    ]
)
def test_shared_remote_never_crosses_calls(events: list[tuple[str, int, bytes]]) -> None:
    """Any interleaving of set-ups, handshakes, media, forgeries and closes of four calls behind one
    address: media reaches only the call whose keys it carries (or, unauthenticated, a claim-less call
    whose turn it is or whose handshake just ended); DTLS only the call whose turn it is and that
    learned the address, or the calls whose handshake just ended; a retransmission of a call's final
    flight within its window reaches that call only, never a handshake in progress; counters add up;
    tables stay bounded; nothing raises."""
    now = [0.0]
    limits = DemuxLimits(max_flows=6, max_ssrcs_per_remote=3, max_held=3, turn_hold_s=2, turn_settle_s=1)
    net = Net(limits, clock=lambda: now[0])
    calls = [net.call() for _ in range(4)]
    claims = [FakeClaim(i) for i in range(4)]
    flights: dict[int, int] = {}  # call index -> record number of the last final flight its remote sent
    for kind, index, junk in events:
        ufrag, _ = calls[index]
        call = net.demux._calls.get(ufrag)
        before = [len(r.got) for _, r in calls]
        holder = net.demux.turn_holder(SFU)
        single = net.demux.flow_owner(SFU)
        raw_to = {single} if single is not None else set()
        if holder is not None and holder in net.demux.flow_calls(SFU):
            raw_to.add(holder)
        done = {u for u, _ in calls if u in net.demux._calls and net.demux._calls[u].dtls_enc == 3}
        done |= {u for u, _ in calls if u in net.demux._calls and net.demux._calls[u].settled}
        done |= {u for u, _ in calls if u in net.demux._calls and net.demux._calls[u].media_claim is not None}
        live = net.demux._calls
        settling = {c.ufrag for c in net.demux._settling.get(SFU, ()) if c.ufrag in live}
        settling &= {u for u in settling if now[0] - (live[u].enc_since or 0.0) < limits.turn_settle_s}
        settling &= set(net.demux.flow_calls(SFU))
        if kind == "check" and call is not None:
            net.demux.datagram_received(binding_request(ufrag, PASSWORD), SFU)
        elif kind == "send_check" and call is not None:
            net.demux.send_from(call, check_from(ufrag), SFU)
        elif kind == "send_hello" and call is not None:
            net.demux.send_from(call, dtls(0, handshake_type=1), SFU)
        elif kind == "send_fin" and call is not None:
            net.demux.send_from(call, dtls(1), SFU)
        elif kind in ("get_hello", "get_fin", "media", "forged"):
            data = {
                "get_hello": dtls(0, 1),
                "get_fin": dtls(1),
                "media": srtp(0x10 + index, tag=index, seq=len(junk) + 1),
                "forged": srtp(0x10 + index, tag=9, seq=len(junk) + 1),
            }[kind]
            net.demux.datagram_received(data, SFU)
            got = [calls[i][0] for i, (_, r) in enumerate(calls) if len(r.got) > before[i]]
            # Raw delivery: DTLS, or media no claim took, only to the address's one call, to the call
            # whose turn it is there (and which learned the address), or to calls that just finished.
            assert set(got) <= raw_to | settling and (len(got) <= 1 or set(got) <= settling | {holder})
        elif kind == "serve" and holder is not None and holder in net.demux.flow_calls(SFU):
            # The holder's whole handshake as DTLS server: ClientHello, our flight, their final flight
            # (key: its index), our CCS+Finished (which the SFU may never get: then get_retrans).
            owner = next(i for i, (u, _) in enumerate(calls) if u == holder)
            server = net.demux._calls[holder]
            net.demux.datagram_received(dtls(0, handshake_type=1), SFU)
            net.demux.send_from(server, dtls(0), SFU)
            flights[owner] = 1
            net.demux.datagram_received(final_flight(bytes([owner])), SFU)
            net.demux.send_from(server, CCS + dtls(1), SFU)
        elif kind in ("get_flight", "get_retrans"):
            # The remote of the call whose turn it is (and which learned the address) sends its final
            # flight (key: that call's index); or call ``index``'s remote retransmits the one it sent.
            sharers = net.demux.flow_calls(SFU)
            holders = [i for i, (u, _) in enumerate(calls) if u == holder and u in sharers]
            owner = index if kind == "get_retrans" else (holders[0] if holders else -1)
            if owner >= 0 and (kind == "get_flight" or owner in flights):
                seq = flights[owner] + 5 if kind == "get_retrans" else 1
                flights[owner] = seq
                net.demux.datagram_received(final_flight(bytes([owner]), seq), SFU)
                reached = {calls[i][0] for i, (_, r) in enumerate(calls) if len(r.got) > before[i]}
                sender = calls[owner][0]
                if kind == "get_retrans" and sender in settling:
                    assert reached == {sender}  # within its window a repeat reaches its own call only
                if sender in sharers:  # (a remote whose call forgot the address reaches whoever has it)
                    in_progress = {u for u in reached if u in live and live[u].hello and not live[u].settled}
                    assert in_progress <= {sender}  # never another call's handshake in progress
        elif kind == "get_alert":
            net.demux.datagram_received(ALERT, SFU)
            alerted = {calls[i][0] for i, (_, r) in enumerate(calls) if len(r.got) > before[i]}
            # An encrypted alert: to the one call, or to calls whose handshake is over (never mid-way).
            assert alerted <= ({single} if single is not None else done & set(net.demux.flow_calls(SFU)))
        elif kind == "attach" and call is not None and call.media_claim is None:
            call.media_claim = claims[index]
        elif kind == "close" and call is not None:
            net.demux.unregister(call)
        elif kind == "tick":
            now[0] += 0.5 * (index + 1)
        elif kind == "junk":
            net.demux.datagram_received(junk, SFU)
        for i, claim in enumerate(claims):
            assert all(d[12] == i for d in claim.took)  # media only under its own keys
        stats = net.demux.stats()
        assert stats.flows <= limits.max_flows and len(net.demux._turns) <= limits.max_flows
        assert all(len(s.ssrcs) <= limits.max_ssrcs_per_remote for s in net.demux._shared.values())
        assert all(len(c.held) <= limits.max_held for c in net.demux._calls.values())
        settling_calls = [c for queue in net.demux._settling.values() for c in queue]
        assert all(net.demux._calls.get(c.ufrag) is c for c in settling_calls)  # no closed call kept
        assert len(net.demux._settling) <= limits.max_flows and all(net.demux._settling.values())
    stats = net.demux.stats()
    routed = (
        stats.routed_by_ufrag
        + stats.routed_by_transaction
        + stats.routed_by_flow
        + stats.routed_by_ssrc
        + stats.routed_by_claim
        + stats.early_media
        + stats.dtls_to_sharers
        + stats.dtls_retransmits
    )
    dropped = (
        stats.unknown
        + stats.forged
        + stats.malformed
        + stats.foreign_worker
        + stats.flow_conflicts
        + stats.unclaimed
        + stats.claims_limited
        + stats.dtls_ambiguous
    )
    assert routed + dropped == stats.datagrams_in


def test_a_controlled_calls_checks_never_wait_but_its_answers_do() -> None:
    """A controlled agent's own checks go out at once (the remote nominates through its checks, whose
    answers wait); two demultiplexers facing each other (emulator and relay) thus never wait for each
    other's turn."""
    net = Net()
    (u1, _), (u2, _) = shared_calls(net, 2)
    demux = net.demux
    demux.send_from(demux._calls[u1], check_from(u1), SFU)  # u1 (controlling) has the turn
    controlled = stun.Message(stun.Method.BINDING, stun.Class.REQUEST)
    controlled.attributes["USERNAME"] = f"remote:{u2}"
    controlled.attributes["ICE-CONTROLLED"] = 7
    controlled.add_message_integrity(b"r" * 22)
    answer = binding_response(secrets.token_bytes(12))
    demux.send_from(demux._calls[u2], bytes(controlled), SFU)
    demux.send_from(demux._calls[u2], answer, SFU)
    assert [d for d, _ in net.sent][-1] == bytes(controlled) and demux._calls[u2].held == [(answer, SFU)]
    assert stun_has_attribute(bytes(controlled), 0x8029) and not stun_has_attribute(check_from(u1), 0x8029)


def test_dtls_records_reads_every_record_of_a_flight() -> None:
    assert dtls_records(dtls(0)) == (False, True)
    assert dtls_records(CCS + dtls(1)) == (True, True)  # CCS and the encrypted Finished, coalesced
    assert dtls_records(ALERT) == (True, False)
    assert dtls_records(ALERT + ALERT) == (True, False)
    assert dtls_records(b"\x2c" + bytes(20)) == (True, True)  # a DTLS 1.3 unified header: the handshake's
    assert dtls_records(b"\x17\xfe\xfd") == (True, True)  # truncated: the handshake's, never everyone's


@settings(max_examples=300, deadline=None)
@given(st.binary(max_size=200))
def test_dtls_records_never_raises(data: bytes) -> None:
    encrypted, handshake = dtls_records(data)
    assert isinstance(encrypted, bool) and isinstance(handshake, bool)


def test_a_coalesced_flight_ends_the_handshake_and_an_alert_reaches_the_calls_that_finished() -> None:
    """Finished comes coalesced behind ChangeCipherSpec; once both passed, a DTLS client's turn is over.
    A close_notify (encrypted alert) from the shared address reaches every call whose handshake is over,
    none still setting up (each DTLS stack drops the records that are not its own)."""
    net = Net()
    (u1, c1), (u2, c2), (u3, c3) = shared_calls(net, 3)
    demux = net.demux
    a, b, c = (demux._calls[u] for u in (u1, u2, u3))
    demux.send_from(a, dtls(0, handshake_type=1), SFU)
    demux.send_from(b, check_from(u2), SFU)  # b waits
    demux.send_from(a, dtls(0, handshake_type=16) + CCS + dtls(1), SFU)  # CKE, CCS, Finished
    demux.datagram_received(CCS + dtls(1), SFU)
    assert a.settled and demux.turn_holder(SFU) == u2
    demux.datagram_received(ALERT, SFU)
    assert media(c1)[-1] == ALERT and ALERT not in media(c2) and ALERT not in media(c3)
    assert demux.dtls_to_sharers == 1
    c.media_claim = FakeClaim(3)  # c attached (finished at another address): an alert may be its own
    demux.datagram_received(ALERT, SFU)
    assert media(c3)[-1] == ALERT and ALERT not in media(c2)


def test_a_turn_passing_while_the_socket_refuses_sends_raises_nothing() -> None:
    """Held datagrams go out on the receive path (a turn passes when the remote's Finished arrives): a
    socket that refuses them (closing) is counted, never raised into the datagram being routed."""
    net = Net()
    (u1, _), (u2, _), _ = shared_calls(net, 3)
    demux = net.demux
    a, b = demux._calls[u1], demux._calls[u2]
    demux.send_from(a, check_from(u1), SFU)
    demux.send_from(b, check_from(u2), SFU)
    demux.send_from(a, dtls(0, handshake_type=1), SFU)
    demux.send_from(a, dtls(1), SFU)

    def refuse(data: bytes, addr: Address) -> None:
        raise OSError("socket closed")

    demux.send = refuse
    demux.datagram_received(dtls(1), SFU)  # a's turn ends here; b's held check cannot go out
    assert demux.turn_holder(SFU) == u2 and demux.send_after_close == 1 and b.held == []


def test_a_retransmitted_final_flight_reaches_the_call_that_finished_not_the_next_set_up() -> None:
    """a (DTLS server) finished and its turn passed to b at once; a's CCS+Finished was lost, so the SFU
    sends a's final flight again while b's handshake runs. It reaches a (by its key exchange, or by a
    record a got under a higher record number), never b; b's own flight, even with the same certificate
    record as a's (one SFU certificate), reaches b. Past ``turn_settle_s`` a is no longer looked for."""
    now = [0.0]
    net = Net(DemuxLimits(turn_settle_s=4.0), clock=lambda: now[0])
    (u1, c1), (u2, c2), (u3, _) = shared_calls(net, 3)
    demux = net.demux
    a, b, c = (demux._calls[u] for u in (u1, u2, u3))
    for call, ufrag in ((a, u1), (b, u2), (c, u3)):
        demux.send_from(call, check_from(ufrag), SFU)
    finish_as_server(net, u1, b"key-of-a")
    assert demux.turn_holder(SFU) == u2 and a.flight and a.flight_seq == 3
    demux.datagram_received(dtls(0, handshake_type=1), SFU)  # b's ClientHello: b has begun
    assert b.hello and c2.got[-1][0][13] == 1
    again = final_flight(b"key-of-a", first_seq=5)
    demux.datagram_received(again, SFU)
    assert c1.got[-1] == (again, SFU) and all(d != again for d, _ in c2.got) and demux.dtls_retransmits == 1
    split = record(0, 9, message(11, b"one-certificate", 1))  # a's certificate alone, a newer record
    demux.datagram_received(split, SFU)
    assert c1.got[-1] == (split, SFU) and demux.dtls_retransmits == 2
    own = final_flight(b"key-of-b")  # b's: the same certificate record as a's, a's record numbers
    demux.datagram_received(own, SFU)
    assert c2.got[-1] == (own, SFU) and all(d != own for d, _ in c1.got) and demux.dtls_retransmits == 2
    now[0] += 4.0
    demux.datagram_received(again, SFU)  # a's window is over: routed as any flight, to the holder
    assert c2.got[-1] == (again, SFU) and demux.dtls_retransmits == 2 and SFU not in demux._settling


def test_a_flight_the_holder_cannot_be_waiting_for_never_reaches_it() -> None:
    """The holder has begun no handshake (no ClientHello sent or received): a handshake flight without a
    ClientHello is not its own. It goes to the calls whose handshake just ended there (each DTLS stack
    drops what is not its own), or is dropped when there is none; never to the holder."""
    now = [0.0]
    net = Net(DemuxLimits(turn_settle_s=4.0), clock=lambda: now[0])
    (u1, c1), (u2, c2) = shared_calls(net, 2)
    demux = net.demux
    a, b = demux._calls[u1], demux._calls[u2]
    demux.send_from(a, check_from(u1), SFU)
    demux.send_from(b, check_from(u2), SFU)
    finish_as_server(net, u1, b"key-of-a")
    stray = final_flight(b"key-of-nobody")
    demux.datagram_received(stray, SFU)
    assert c1.got[-1] == (stray, SFU) and all(d != stray for d, _ in c2.got) and demux.dtls_retransmits == 1
    now[0] += 4.0
    demux.datagram_received(stray, SFU)
    assert demux.dtls_ambiguous == 1 and all(d != stray for d, _ in c2.got)
    demux.datagram_received(dtls(0, handshake_type=1), SFU)  # b's ClientHello: from now on, b's
    demux.datagram_received(stray, SFU)
    assert c2.got[-1] == (stray, SFU)


def test_flights_to_the_finished_calls_are_bounded_per_second() -> None:
    """Handing one flight to every call that just finished costs one DTLS read each: a spoofed flood is
    held to ``claim_trials_per_s`` hand-overs a second per address (then ``claims_limited``)."""
    now = [0.0]
    net = Net(DemuxLimits(turn_settle_s=4.0, claim_trials_per_s=2), clock=lambda: now[0])
    calls = shared_calls(net, 4)
    demux = net.demux
    for ufrag, _ in calls:
        demux.send_from(demux._calls[ufrag], check_from(ufrag), SFU)
    for index, (ufrag, _) in enumerate(calls[:3]):
        finish_as_server(net, ufrag, b"key-%d" % index)
    assert len(demux._settling[SFU]) == 3
    demux.datagram_received(final_flight(b"forged"), SFU)  # 3 hand-overs > 2 a second
    assert demux.claims_limited == 1 and demux.dtls_retransmits == 0


def test_early_media_reaches_the_calls_whose_handshake_just_ended() -> None:
    """A DTLS server's turn ends at once now, so the remote's first media (before the call's fast path
    attached) comes while another call holds the address: it goes, unauthenticated, to every claim-less
    call whose handshake just ended there (and the holder if claim-less); each fast path keeps only
    what its keys take. Past ``turn_settle_s``, only the holder."""
    now = [0.0]
    net = Net(DemuxLimits(turn_settle_s=4.0), clock=lambda: now[0])
    (u1, c1), (u2, c2), (u3, c3) = shared_calls(net, 3)
    demux = net.demux
    for ufrag in (u1, u2, u3):
        demux.send_from(demux._calls[ufrag], check_from(ufrag), SFU)
    finish_as_server(net, u1, b"key-of-a")
    first = srtp(0x9, tag=1)
    demux.datagram_received(first, SFU)
    assert media(c1)[-1] == first and media(c2)[-1] == first and first not in media(c3)
    assert demux.early_media == 1
    now[0] += 4.0
    demux.datagram_received(srtp(0x9, tag=1, seq=2), SFU)
    assert media(c2)[-1] == srtp(0x9, 1, 2) and srtp(0x9, 1, 2) not in media(c1)


def test_the_settling_calls_are_bounded_and_a_closed_call_leaves_them() -> None:
    """The calls kept for ``turn_settle_s`` after their handshake are at most ``max_settling`` per address
    (the oldest goes first), a closed call leaves at once (no table keeps its protocol alive), and an
    address with none left is forgotten."""
    now = [0.0]
    net = Net(DemuxLimits(turn_settle_s=4.0, max_settling=2), clock=lambda: now[0])
    calls = shared_calls(net, 3)
    demux = net.demux
    for ufrag, _ in calls:
        demux.send_from(demux._calls[ufrag], check_from(ufrag), SFU)
    for index, (ufrag, _) in enumerate(calls):
        finish_as_server(net, ufrag, b"key-%d" % index)
    first, second, third = (demux._calls[u] for u, _ in calls)
    assert list(demux._settling[SFU]) == [second, third] and first.settling_at is None
    demux.unregister(second)
    assert list(demux._settling[SFU]) == [third]
    demux.unregister(third)
    assert SFU not in demux._settling and third.settling_at is None
