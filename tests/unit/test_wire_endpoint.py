"""Rules both ends share: ACK, retransmission, replay window, authentication, unknown calls (no network)."""

from __future__ import annotations

import asyncio
from typing import Any

import pytest

from splitrelay.inference import wire
from splitrelay.inference.endpoint import CallState, LinkError, Peer, WireEndpoint
from splitrelay.inference.wire import FLAG_RELIABLE, CallStart, Message, MsgType, WireError
from splitrelay.inference.wire_auth import ReplyLimiter, Sealer, WireKey, WireKeyring
from tests.wire_keys import KEY

# The probe plays inference; datagrams "from the relay" are sealed as the relay would seal them.
FROM_PEER = Sealer(WireKeyring(KEY), "relay")

PEER: Peer = ("127.0.0.1", 40000)
OTHER: Peer = ("127.0.0.1", 40001)


class FakeTransport(asyncio.DatagramTransport):
    def __init__(self, protocol: asyncio.DatagramProtocol) -> None:
        super().__init__()
        self.protocol = protocol
        self.sent: list[tuple[Message, Any]] = []
        self.raw: list[bytes] = []
        self.closing = False

    def sendto(self, data: Any, addr: Any = None) -> None:
        self.raw.append(bytes(data))
        if data[1] in (MsgType.AUDIO_IN, MsgType.AUDIO_OUT):
            self.sent.append((wire.decode(data), addr))
            return
        opened = TO_PEER.open(bytes(data))
        assert opened is not None, "the endpoint sent a control datagram the peer cannot authenticate"
        self.sent.append((wire.decode(opened[0]), addr))

    def close(self) -> None:
        self.closing = True
        asyncio.get_running_loop().call_soon(self.protocol.connection_lost, None)

    def is_closing(self) -> bool:
        return self.closing


TO_PEER = FROM_PEER  # the relay's sealer also opens what inference sends


class Probe(WireEndpoint):
    def __init__(self, **kw: Any) -> None:
        kw.setdefault("key", KEY)
        super().__init__(role="inference", **kw)
        self.handled: list[tuple[Message, Peer]] = []
        self.unacked: list[tuple[int, MsgType, Peer]] = []
        self.transport = FakeTransport(self)
        self.connection_made(self.transport)

    knows_no_call = False  # True: every message goes the unknown-call way, as at a fresh endpoint

    def handle(self, msg: Message, peer: Peer, size: int, key_id: int | None) -> None:
        self.handled.append((msg, peer))
        if self.knows_no_call:
            self.handle_unknown(msg, peer, size, key_id)

    def on_unacked(self, call_id: int, msg_type: MsgType, peer: Peer) -> None:
        self.unacked.append((call_id, msg_type, peer))

    @property
    def sent(self) -> list[tuple[Message, Any]]:
        return self.transport.sent

    @property
    def raw(self) -> list[bytes]:
        return self.transport.raw


def clear_msg(seq: int = 4, call_id: int = 9) -> Message:
    return Message(MsgType.CLEAR, call_id, seq, 960)


def sealed(msg: Message, sealer: Sealer = FROM_PEER) -> bytes:
    return sealer.seal(wire.encode(msg))


def ack_for(msg: Message) -> bytes:
    return sealed(Message(MsgType.ACK, msg.call_id, msg.seq, payload=wire.pack_ack(msg.type)))


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


async def test_without_a_key_an_endpoint_does_not_start(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.delenv("SPLITRELAY_WIRE_KEY")
    with pytest.raises(ValueError, match=r"SPLITRELAY_WIRE_KEY: not set; .*at least 32 bytes"):
        Probe(key=None)


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
    for junk in (b"", b"\x00" * 19, b"\x02\x03" + bytes(30), b"\x02hello world, this is not a datagram"):
        ep.datagram_received(junk, PEER)
    assert ep.stats.garbage == 3  # two too short; an AUDIO_IN with call id 0
    assert ep.stats.auth_failed == 1  # type "h" is not audio: it needs a tag, and has none
    assert ep.stats.datagrams_in == 4
    assert ep.handled == []
    good = wire.encode_audio(MsgType.AUDIO_IN, 9, 0, 0, b"x")
    ep.datagram_received(good, ("127.0.0.1", 40000, 0, 0))  # IPv6-style 4-tuple address
    assert ep.handled == [(wire.decode(good), PEER)]


async def test_another_protocol_version_is_counted_and_dropped() -> None:
    ep = Probe()
    old = bytearray(wire.encode_audio(MsgType.AUDIO_IN, 9, 0, 0, b"x"))
    old[0] = 1
    ep.datagram_received(bytes(old), PEER)
    ep.datagram_received(b"\x01" + sealed(Message(MsgType.CLEAR, 9, 4, 960, FLAG_RELIABLE))[1:], PEER)
    assert (ep.stats.bad_version, ep.stats.garbage, ep.handled, ep.sent) == (2, 0, [], [])


def _control_variants() -> dict[str, bytes]:
    """One CLEAR as the peer would send it, and every way of getting its authentication wrong."""
    body = wire.encode(Message(MsgType.CLEAR, 9, 4, 960, FLAG_RELIABLE))
    good = FROM_PEER.seal(body)
    other_key = Sealer(WireKeyring(WireKey(b"k" * 32)), "relay").seal(body)
    flipped = bytearray(good)
    flipped[-1] ^= 1
    altered = bytearray(good)
    altered[16] ^= 1  # the timestamp: covered by the tag
    reflected = Sealer(WireKeyring(KEY), "inference").seal(body)  # the probe's own direction
    unknown_id = bytearray(good)
    unknown_id[-17] ^= 0xFF
    return {
        "good": good,
        "no tag": body,
        "bad tag": bytes(flipped),
        "altered": bytes(altered),
        "wrong key": other_key,
        "reflected": reflected,
        "unknown key id": bytes(unknown_id),
        "truncated": good[:-1],
    }


@pytest.mark.parametrize("case", [c for c in _control_variants() if c != "good"])
async def test_a_control_message_that_does_not_authenticate_is_dropped_unanswered(case: str) -> None:
    ep = Probe()
    ep.datagram_received(_control_variants()[case], PEER)
    assert (ep.stats.auth_failed, ep.handled, ep.sent) == (1, [], [])
    ep.datagram_received(_control_variants()["good"], PEER)  # the probe can tell: the real one passes
    assert [m.type for m, _ in ep.handled] == [MsgType.CLEAR]


async def test_a_forged_ack_does_not_stop_retransmission() -> None:
    ep = Probe(rto=0.005, attempts=2)
    msg = clear_msg()
    future = ep.send_reliable(msg, PEER)
    ep.datagram_received(wire.encode(Message(MsgType.ACK, 9, 4, payload=wire.pack_ack(MsgType.CLEAR))), PEER)
    assert await future is False
    assert ep.stats.auth_failed == 1


async def test_control_messages_are_acked_every_time_but_acted_on_once() -> None:
    ep = Probe()
    state = CallState(9, PEER)
    msg = Message(MsgType.BARGE_IN, 9, 3, 0, FLAG_RELIABLE, bytes(12))
    assert ep.accept_control(msg, state) is True
    assert ep.accept_control(msg, state) is False
    assert ep.stats.duplicates == 1
    acks = [m for m, _ in ep.sent]
    assert [(a.type, a.seq, a.acked_type()) for a in acks] == [(MsgType.ACK, 3, MsgType.BARGE_IN)] * 2
    unreliable = Message(MsgType.EVENT, 9, 4, payload=wire.pack_event({"type": "t"}))
    assert ep.accept_control(unreliable, state) is True
    assert ep.accept_control(unreliable, state) is False  # replayed: not acted on, and not ACKed
    assert len(ep.sent) == 2


async def test_a_control_message_older_than_the_window_is_not_acted_on() -> None:
    ep = Probe()
    state = CallState(9, PEER)
    old = Message(MsgType.EVENT, 9, 0, payload=wire.pack_event({"type": "t"}))
    assert ep.accept_control(old, state)
    for seq in range(1, 200):  # 199 newer messages: seq 0 is far outside the 128-seq window
        assert ep.accept_control(Message(MsgType.EVENT, 9, seq, payload=old.payload), state)
    assert ep.accept_control(old, state) is False
    # A CALL_END is acted on whatever its seq: it ends the call, so it can act only once.
    end = Message(MsgType.CALL_END, 9, 0, flags=FLAG_RELIABLE)
    assert ep.accept_control(end, state) is True


def test_control_seq_wraps() -> None:
    state = CallState(1, PEER)
    state._control_seq = 2**32 - 1
    assert state.next_control_seq() == 2**32 - 1
    assert state.next_control_seq() == 0


def _size(msg: Message) -> int:
    return len(msg.payload) + wire.HEADER_SIZE + (0 if msg.type in wire.AUDIO_TYPES else wire.AUTH_TRAILER)


async def test_unknown_call_gets_one_compact_call_end_and_is_then_quiet() -> None:
    ep = Probe()
    audio = wire.decode(wire.encode_audio(MsgType.AUDIO_IN, 77, 0, 0, b"x" * 40))
    ep.handle_unknown(audio, PEER, _size(audio), None)
    ep.handle_unknown(audio, PEER, _size(audio), None)
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
    assert len(ep.raw[0]) == wire.HEADER_SIZE + wire.AUTH_TRAILER  # 37 bytes: the compact form
    # Its ACK is harmless (nothing pending), and a reliable retransmit of theirs is just ACKed.
    ep.datagram_received(ack_for(end), PEER)
    barge = Message(MsgType.BARGE_IN, 77, 5, 0, FLAG_RELIABLE, bytes(12))
    ep.handle_unknown(barge, PEER, _size(barge), KEY.key_id)
    assert [(m.type, m.seq) for m, _ in ep.sent[1:]] == [(MsgType.ACK, 5)]


async def test_a_reply_to_an_unknown_call_is_never_larger_than_its_request() -> None:
    ep = Probe()
    ep.knows_no_call = True
    sizes = []
    for call_id, n in enumerate(range(1, 60), start=1000):  # AUDIO_IN of 21..79 bytes
        data = wire.encode_audio(MsgType.AUDIO_IN, call_id, 0, 0, b"x" * n)
        before = len(ep.raw)
        ep.datagram_received(data, PEER)
        sizes += [(len(data), len(r)) for r in ep.raw[before:]]
    assert all(reply <= request for request, reply in sizes)
    assert len(sizes) == 59 - 16  # every request of 37 bytes or more got its one compact reply
    assert ep.stats.replies_too_large == 16


async def test_replies_to_unknown_calls_are_rate_limited_per_source_and_overall() -> None:
    now = [0.0]
    ep = Probe()
    ep.knows_no_call = True
    ep.reply_limiter = ReplyLimiter(per_source=(10.0, 5.0), overall=(100.0, 8.0), clock=lambda: now[0])
    for call_id in range(1, 51):
        ep.datagram_received(wire.encode_audio(MsgType.AUDIO_IN, call_id, 0, 0, b"x" * 50), PEER)
    assert len(ep.sent) == 5  # one source's burst
    for call_id in range(51, 101):
        ep.datagram_received(wire.encode_audio(MsgType.AUDIO_IN, call_id, 0, 0, b"x" * 50), OTHER)
    assert len(ep.sent) == 8  # the overall burst is spent
    assert ep.stats.replies_limited == 92
    now[0] = 0.1  # 1 token per source, 10 overall
    ep.datagram_received(wire.encode_audio(MsgType.AUDIO_IN, 500, 0, 0, b"x" * 50), PEER)
    ep.datagram_received(wire.encode_audio(MsgType.AUDIO_IN, 501, 0, 0, b"x" * 50), PEER)
    assert len(ep.sent) == 9


async def test_call_end_for_an_unknown_call_is_only_acked() -> None:
    ep = Probe()
    end = Message(MsgType.CALL_END, 55, 2, flags=FLAG_RELIABLE, payload=wire.pack_call_end("x"))
    ep.handle_unknown(end, PEER, _size(end), KEY.key_id)
    ep.handle_unknown(end, PEER, _size(end), KEY.key_id)
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
    start = Message(MsgType.CALL_START, 88, 0, flags=FLAG_RELIABLE, payload=CallStart(call="c").pack())
    ep.handle_unknown(start, PEER, _size(start), KEY.key_id)
    assert ep.sent == []
    assert ep.stats.unknown_call == 1
