"""Reliability rules shared by both ends: ACK, retransmission, dedup, unknown calls (no network)."""

from __future__ import annotations

import asyncio
from typing import Any

import pytest

from splitrelay.inference import wire
from splitrelay.inference.endpoint import CallState, DedupWindow, LinkError, Peer, WireEndpoint
from splitrelay.inference.wire import FLAG_RELIABLE, CallStart, Message, MsgType, WireError

PEER: Peer = ("127.0.0.1", 40000)
OTHER: Peer = ("127.0.0.1", 40001)


class FakeTransport(asyncio.DatagramTransport):
    def __init__(self, protocol: asyncio.DatagramProtocol) -> None:
        super().__init__()
        self.protocol = protocol
        self.sent: list[tuple[Message, Any]] = []
        self.closing = False

    def sendto(self, data: Any, addr: Any = None) -> None:
        self.sent.append((wire.decode(data), addr))

    def close(self) -> None:
        self.closing = True
        asyncio.get_running_loop().call_soon(self.protocol.connection_lost, None)

    def is_closing(self) -> bool:
        return self.closing


class Probe(WireEndpoint):
    def __init__(self, **kw: Any) -> None:
        super().__init__(**kw)
        self.handled: list[tuple[Message, Peer]] = []
        self.unacked: list[tuple[int, MsgType, Peer]] = []
        self.transport = FakeTransport(self)
        self.connection_made(self.transport)

    def handle(self, msg: Message, peer: Peer) -> None:
        self.handled.append((msg, peer))

    def on_unacked(self, call_id: int, msg_type: MsgType, peer: Peer) -> None:
        self.unacked.append((call_id, msg_type, peer))

    @property
    def sent(self) -> list[tuple[Message, Any]]:
        return self.transport.sent


def clear_msg(seq: int = 4, call_id: int = 9) -> Message:
    return Message(MsgType.CLEAR, call_id, seq, 960)


def ack_for(msg: Message) -> bytes:
    return wire.encode(Message(MsgType.ACK, msg.call_id, msg.seq, payload=wire.pack_ack(msg.type)))


async def test_unacked_message_is_retransmitted_a_bounded_number_of_times() -> None:
    ep = Probe(rto=0.005, attempts=3)
    assert await ep.send_reliable(clear_msg(), PEER) is False
    assert [m.type for m, _ in ep.sent] == [MsgType.CLEAR] * 3
    assert all(m.reliable and addr == PEER for m, addr in ep.sent)
    assert ep.stats.retransmits == 2
    assert ep.stats.ack_timeouts == 1
    assert ep.unacked == [(9, MsgType.CLEAR, PEER)]
    await asyncio.sleep(0.05)
    assert len(ep.sent) == 3  # nothing after giving up


async def test_ack_stops_retransmission_and_resolves_true() -> None:
    ep = Probe(rto=0.005, attempts=5)
    msg = clear_msg()
    future = ep.send_reliable(msg, PEER)
    ep.datagram_received(ack_for(msg), PEER)
    assert await future is True
    await asyncio.sleep(0.05)
    assert len(ep.sent) == 1
    assert ep.stats.retransmits == 0
    assert ep.unacked == []


async def test_ack_from_another_peer_or_for_another_seq_does_not_count() -> None:
    ep = Probe(rto=0.005, attempts=2)
    msg = clear_msg()
    future = ep.send_reliable(msg, PEER)
    ep.datagram_received(ack_for(msg), OTHER)
    ep.datagram_received(ack_for(clear_msg(seq=5)), PEER)
    assert await future is False


async def test_invalid_reliable_message_raises_and_leaves_nothing_pending() -> None:
    ep = Probe()
    with pytest.raises(WireError, match=r"payload: CLEAR carries no payload"):
        ep.send_reliable(Message(MsgType.CLEAR, 9, 0, payload=b"x"), PEER)
    assert ep.sent == []
    assert ep._pending == {}


async def test_garbage_is_counted_and_never_handled() -> None:
    ep = Probe()
    for junk in (b"", b"\x00" * 19, b"\x02" + bytes(30), b"hello world, this is not a datagram"):
        ep.datagram_received(junk, PEER)
    assert ep.stats.garbage == 4
    assert ep.stats.datagrams_in == 4
    assert ep.handled == []
    good = wire.encode_audio(MsgType.AUDIO_IN, 9, 0, 0, b"x")
    ep.datagram_received(good, ("127.0.0.1", 40000, 0, 0))  # IPv6-style 4-tuple address
    assert ep.handled == [(wire.decode(good), PEER)]


async def test_reliable_messages_are_acked_every_time_but_accepted_once() -> None:
    ep = Probe()
    state = CallState(9, PEER)
    msg = wire.decode(wire.encode(Message(MsgType.BARGE_IN, 9, 3, 0, FLAG_RELIABLE, bytes(12))))
    assert ep.accept_reliable(msg, state) is True
    assert ep.accept_reliable(msg, state) is False
    assert ep.stats.duplicates == 1
    acks = [m for m, _ in ep.sent]
    assert [(a.type, a.seq, a.acked_type()) for a in acks] == [(MsgType.ACK, 3, MsgType.BARGE_IN)] * 2
    unreliable = wire.decode(
        wire.encode(Message(MsgType.EVENT, 9, 4, payload=wire.pack_event({"type": "t"})))
    )
    assert ep.accept_reliable(unreliable, state) is True
    assert ep.accept_reliable(unreliable, state) is True  # not reliable: no dedup, no ACK
    assert len(ep.sent) == 2


def test_dedup_window_is_bounded() -> None:
    window = DedupWindow(size=3)
    assert [window.is_duplicate(s) for s in (1, 2, 3)] == [False] * 3
    assert window.is_duplicate(2)
    assert not window.is_duplicate(4)  # evicts 1
    assert not window.is_duplicate(1)
    assert window.is_duplicate(4)


def test_control_seq_wraps() -> None:
    state = CallState(1, PEER)
    state._control_seq = 2**32 - 1
    assert state.next_control_seq() == 2**32 - 1
    assert state.next_control_seq() == 0


async def test_unknown_call_gets_one_call_end_and_is_then_quiet() -> None:
    ep = Probe()
    audio = wire.decode(wire.encode_audio(MsgType.AUDIO_IN, 77, 0, 0, b"x"))
    ep.handle_unknown(audio, PEER)
    ep.handle_unknown(audio, PEER)
    assert ep.stats.unknown_call == 2
    (end, addr), *rest = ep.sent
    assert rest == []
    assert (end.type, end.call_id, end.reason(), end.reliable, addr) == (
        MsgType.CALL_END,
        77,
        "unknown_call",
        True,
        PEER,
    )
    # Its ACK is harmless (nothing pending), and a reliable retransmit of theirs is just ACKed.
    ep.datagram_received(ack_for(end), PEER)
    barge = wire.decode(wire.encode(Message(MsgType.BARGE_IN, 77, 5, 0, FLAG_RELIABLE, bytes(12))))
    ep.handle_unknown(barge, PEER)
    assert [(m.type, m.seq) for m, _ in ep.sent[1:]] == [(MsgType.ACK, 5)]


async def test_call_end_for_an_unknown_call_is_only_acked() -> None:
    ep = Probe()
    end = wire.decode(
        wire.encode(Message(MsgType.CALL_END, 55, 2, flags=FLAG_RELIABLE, payload=wire.pack_call_end("x")))
    )
    ep.handle_unknown(end, PEER)
    ep.handle_unknown(end, PEER)
    assert [(m.type, m.seq, m.acked_type()) for m, _ in ep.sent] == [(MsgType.ACK, 2, MsgType.CALL_END)] * 2


async def test_close_gives_up_pending_messages_and_refuses_sends() -> None:
    ep = Probe(rto=1.0)
    future = ep.send_reliable(clear_msg(), PEER)
    await ep._close_socket()
    assert future.result() is False
    with pytest.raises(LinkError, match=r"endpoint: the socket is not open"):
        ep.send_raw(b"x", PEER)


def test_endpoint_settings_are_checked() -> None:
    with pytest.raises(ValueError, match=r"rto: must be 0.001..5.0 seconds, got 0"):
        Probe(rto=0)
    with pytest.raises(ValueError, match=r"attempts: must be 1..20, got 0"):
        Probe(attempts=0)


async def test_late_call_start_for_an_ended_call_is_not_acked() -> None:
    ep = Probe()
    ep.remember_ended(PEER, 88)
    start = wire.decode(
        wire.encode(
            Message(MsgType.CALL_START, 88, 0, flags=FLAG_RELIABLE, payload=CallStart(call="c").pack())
        )
    )
    ep.handle_unknown(start, PEER)
    assert ep.sent == []
    assert ep.stats.unknown_call == 1
