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
from hypothesis import given, settings
from hypothesis import strategies as st

from splitrelay.relay.media.demux import Demux, DemuxLimits, stun_integrity_ok, stun_username_and_integrity

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


def test_a_live_flow_is_not_taken_but_a_quiet_one_moves() -> None:
    """Another call's check from a held address (a spoofed source) is refused while the holder's STUN
    is fresh; once the holder has been quiet for flow_hold_s (a gone caller), the address moves."""
    now = [1000.0]
    net = Net(DemuxLimits(flow_hold_s=30.0), clock=lambda: now[0])
    (u1, c1), (u2, c2) = net.call(), net.call()
    net.demux.datagram_received(binding_request(u1, PASSWORD), CALLER)
    now[0] += 20
    net.demux.datagram_received(binding_request(u1, PASSWORD), CALLER)  # the holder refreshes it
    now[0] += 29
    net.demux.datagram_received(binding_request(u2, PASSWORD), CALLER)  # 29 s after: refused
    net.demux.datagram_received(SRTP, CALLER)
    assert c2.got == [] and [d for d, _ in c1.got][-1] == SRTP
    assert (net.demux.flow_conflicts, net.demux.flows_moved) == (1, 0)
    now[0] += 1.5
    net.demux.datagram_received(binding_request(u2, PASSWORD), CALLER)  # 30.5 s after: moves
    net.demux.datagram_received(SRTP, CALLER)
    assert [d for d, _ in c2.got][-1] == SRTP and len(c1.got) == 3
    assert net.demux.flows_moved == 1 and net.demux._calls[u1].flows == []


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


def test_an_answer_from_a_held_address_is_refused_too() -> None:
    net = Net()
    (u1, _), (u2, c2) = net.call(), net.call()
    net.demux.datagram_received(binding_request(u1, PASSWORD), CALLER)
    check = binding_request("remote", "r" * 22, remote=u2)
    net.demux.send_from(net.demux._calls[u2], check, CALLER)
    net.demux.datagram_received(binding_response(check[8:20]), CALLER)
    assert c2.got == [] and net.demux.flow_conflicts == 1 and net.demux.flow_owner(CALLER) == u1
