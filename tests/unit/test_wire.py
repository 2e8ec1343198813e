"""The wire codec: round trips for every type, every rejection rule, and property/fuzz tests."""

from __future__ import annotations

import json
import struct
from typing import Any

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from splitrelay.inference import wire
from splitrelay.inference.wire import (
    FLAG_LEVEL_PRESENT,
    FLAG_MARKER,
    FLAG_RELIABLE,
    FLAG_VOICE,
    HEADER_SIZE,
    MAX_DATAGRAM,
    MAX_PAYLOAD,
    BargeIn,
    CallStart,
    Message,
    MsgType,
    WireError,
)

CALL_ID = 0x0123456789ABCDEF


def header(
    type_: int,
    *,
    version: int = wire.VERSION,
    flags: int = 0,
    call_id: int = CALL_ID,
    seq: int = 7,
    ts: int = 960,
) -> bytes:
    return struct.pack("!BBHQII", version, type_, flags, call_id, seq, ts)


# ---- round trips ----------------------------------------------------------------------------


def test_header_layout_is_20_bytes_big_endian() -> None:
    data = wire.encode_audio(MsgType.AUDIO_IN, CALL_ID, 0x01020304, 0x0A0B0C0D, b"\xfc", FLAG_MARKER)
    assert HEADER_SIZE == 20
    assert data == bytes([2, 3, 0, 1]) + CALL_ID.to_bytes(8, "big") + bytes(
        [1, 2, 3, 4, 10, 11, 12, 13, 0xFC]
    )


def test_audio_in_round_trip_with_level_and_voice() -> None:
    flags = wire.audio_in_flags(marker=True, level=37, voice=True)
    data = wire.encode_audio(MsgType.AUDIO_IN, CALL_ID, 5, 4800, b"opus-frame", flags)
    msg = wire.decode(data)
    assert msg == Message(MsgType.AUDIO_IN, CALL_ID, 5, 4800, flags, b"opus-frame")
    assert msg.marker
    assert wire.flags_level(msg.flags) == 37
    assert wire.flags_voice(msg.flags)
    assert wire.encode(msg) == data


def test_audio_in_without_level() -> None:
    flags = wire.audio_in_flags()
    assert flags == 0
    assert wire.flags_level(flags) is None
    assert not wire.flags_voice(flags)


@pytest.mark.parametrize("level", [0, 1, 64, 126, 127])
def test_every_level_survives(level: int) -> None:
    flags = wire.audio_in_flags(level=level)
    assert flags & FLAG_LEVEL_PRESENT
    msg = wire.decode(wire.encode_audio(MsgType.AUDIO_IN, 1, 0, 0, b"x", flags))
    assert wire.flags_level(msg.flags) == level
    assert not wire.flags_voice(msg.flags)


def test_audio_out_round_trip() -> None:
    data = wire.encode_audio(MsgType.AUDIO_OUT, CALL_ID, 9, 8640, b"\x01\x02", FLAG_MARKER)
    msg = wire.decode(data)
    assert (msg.type, msg.seq, msg.timestamp, msg.marker, msg.payload) == (
        MsgType.AUDIO_OUT,
        9,
        8640,
        True,
        b"\x01\x02",
    )


def test_call_start_round_trip() -> None:
    info = CallStart(call="call-abc", channels=2, metadata={"lang": "fr", "n": [1, 2]})
    msg = Message(MsgType.CALL_START, CALL_ID, 0, flags=FLAG_RELIABLE, payload=info.pack())
    back = wire.decode(wire.encode(msg))
    assert back.call_start() == info
    assert back.json()["codec"] == "opus"
    assert back.json()["sample_rate"] == 48000
    assert back.json()["ptime_ms"] == 20
    assert back.reliable


def test_call_end_event_mark_clear_ack_barge_in_round_trips() -> None:
    end = wire.decode(
        wire.encode(Message(MsgType.CALL_END, 1, 3, flags=FLAG_RELIABLE, payload=wire.pack_call_end("bye")))
    )
    assert end.reason() == "bye"
    event = {"type": "transcript.delta", "text": "héllo ✓", "final": False}
    ev = wire.decode(wire.encode(Message(MsgType.EVENT, 1, 4, payload=wire.pack_event(event))))
    assert ev.json() == event
    assert not ev.reliable
    mark = wire.decode(
        wire.encode(Message(MsgType.MARK, 1, 5, 19200, FLAG_RELIABLE, wire.pack_mark("sentence-1")))
    )
    assert (mark.mark_name(), mark.timestamp) == ("sentence-1", 19200)
    clear = wire.decode(wire.encode(Message(MsgType.CLEAR, 1, 6, 960, FLAG_RELIABLE)))
    assert (clear.type, clear.payload, clear.timestamp) == (MsgType.CLEAR, b"", 960)
    ack = wire.decode(wire.encode(Message(MsgType.ACK, 1, 6, payload=wire.pack_ack(MsgType.CLEAR))))
    assert (ack.acked_type(), ack.seq) == (MsgType.CLEAR, 6)
    barge = BargeIn(played_samples=48_000, dropped_frames=12, response_seq=2**32 - 1)
    bi = wire.decode(wire.encode(Message(MsgType.BARGE_IN, 1, 7, 0, FLAG_RELIABLE, barge.pack())))
    assert bi.barge_in() == barge


def test_call_start_carries_when_it_was_sent() -> None:
    info = CallStart(call="c", sent_at_ms=1_733_400_000_123)
    msg = wire.decode(
        wire.encode(Message(MsgType.CALL_START, 1, 0, flags=FLAG_RELIABLE, payload=info.pack()))
    )
    assert msg.call_start().sent_at_ms == 1_733_400_000_123
    assert msg.json()["sent_at_ms"] == 1_733_400_000_123


def test_an_empty_call_end_is_the_compact_unknown_call() -> None:
    data = wire.encode(Message(MsgType.CALL_END, 1, 0, flags=FLAG_RELIABLE))
    assert len(data) == HEADER_SIZE
    assert wire.decode(data).reason() == wire.UNKNOWN_CALL == "unknown_call"


def test_typed_accessor_on_the_wrong_type_names_the_type() -> None:
    msg = wire.decode(wire.encode_audio(MsgType.AUDIO_OUT, 1, 0, 0, b"x"))
    with pytest.raises(WireError, match=r"type: AUDIO_OUT has no such payload \(expected MARK\)"):
        msg.mark_name()


def test_largest_datagram_is_accepted_and_one_more_byte_is_not() -> None:
    data = wire.encode_audio(MsgType.AUDIO_OUT, 1, 0, 0, b"x" * MAX_PAYLOAD)
    assert len(data) == MAX_DATAGRAM
    assert wire.decode(data).payload == b"x" * MAX_PAYLOAD
    with pytest.raises(WireError, match=rf"datagram: {MAX_DATAGRAM + 1} bytes, limit {MAX_DATAGRAM}"):
        wire.decode(data + b"y")
    with pytest.raises(
        WireError, match=rf"payload: an Opus frame is 1..{MAX_PAYLOAD} bytes, got {MAX_PAYLOAD + 1}"
    ):
        wire.encode_audio(MsgType.AUDIO_OUT, 1, 0, 0, b"x" * (MAX_PAYLOAD + 1))


def test_decode_accepts_memoryview_and_bytearray() -> None:
    data = wire.encode_audio(MsgType.AUDIO_OUT, 1, 2, 3, b"abc")
    assert wire.decode(memoryview(data)) == wire.decode(bytearray(data)) == wire.decode(data)


# ---- rejections: each names the field and the limit ------------------------------------------


@pytest.mark.parametrize(
    ("data", "pattern"),
    [
        (b"", r"header: datagram is 0 bytes, a header is 20"),
        (header(3)[:19], r"header: datagram is 19 bytes, a header is 20"),
        (header(3, version=1) + b"x", r"version: got 1, this end speaks 2"),
        (header(9, flags=FLAG_RELIABLE, version=3), r"version: got 3, this end speaks 2"),
        (header(7) + b"x" * 1364, r"payload: EVENT carries 1364 bytes, limit 1363"),
        (header(0) + b"x", r"type: unknown message type 0 \(known 1..12\)"),
        (header(13) + b"x", r"type: unknown message type 13"),
        (header(3, call_id=0) + b"x", r"call_id: 0 is reserved"),
        (header(3), r"payload: AUDIO_IN carries one Opus frame of 1..1380 bytes, got 0"),
        (header(4, flags=FLAG_LEVEL_PRESENT) + b"x", r"flags: bits 0x0002 are not allowed on AUDIO_OUT"),
        (header(3, flags=0x8000) + b"x", r"flags: bits 0x8000 are not allowed on AUDIO_IN"),
        (header(3, flags=FLAG_RELIABLE) + b"x", r"flags: bits 0x0008 are not allowed on AUDIO_IN"),
        (header(3, flags=5 << 8) + b"x", r"flags: level bits or VOICE set without LEVEL_PRESENT"),
        (header(3, flags=FLAG_VOICE) + b"x", r"flags: level bits or VOICE set without LEVEL_PRESENT"),
        (header(9), r"flags: CLEAR must set RELIABLE \(0x0008\)"),
        (header(5) + bytes(12), r"flags: BARGE_IN must set RELIABLE"),
        (header(9, flags=FLAG_RELIABLE) + b"x", r"payload: CLEAR carries no payload, got 1 bytes"),
        (header(5, flags=FLAG_RELIABLE) + bytes(11), r"payload: BARGE_IN carries exactly 12 bytes, got 11"),
        (header(6), r"payload: MARK name must be 1..255 bytes of UTF-8, got 0"),
        (header(6) + b"m" * 256, r"payload: MARK name must be 1..255 bytes of UTF-8, got 256"),
        (header(6) + b"\xff\xfe", r"payload: MARK name is not valid UTF-8"),
        (header(8) + b"", r"payload: ACK carries exactly 1 byte"),
        (header(8) + bytes([3]), r"payload: ACK carries exactly 1 byte, the type of a reliable message"),
        (header(8, flags=FLAG_RELIABLE) + bytes([9]), r"flags: bits 0x0008 are not allowed on ACK"),
        (header(7) + b"{not json", r"payload: EVENT is not valid UTF-8 JSON \(JSONDecodeError\)"),
        (header(7) + b"\xff{}", r"payload: EVENT is not valid UTF-8 JSON \(UnicodeDecodeError\)"),
        (header(7) + b"[1, 2]", r"payload: EVENT must be a JSON object"),
        (header(7) + b'{"x": NaN, "type": "a"}', r"payload: EVENT is not valid UTF-8 JSON"),
        (header(7) + b'{"type": "a", "x": 1e999}', r"payload: EVENT is not valid UTF-8 JSON \(ValueError\)"),
        (header(7) + b'{"text": "no type"}', r'payload: EVENT must be a JSON object with a non-empty "type"'),
        (header(2, flags=FLAG_RELIABLE) + b"{}", r'payload: CALL_END must be a JSON object with a "reason"'),
        (header(1, flags=FLAG_RELIABLE) + b"{}", r"call_start.call: must be a string of 1..128 characters"),
    ],
)
def test_decode_rejects(data: bytes, pattern: str) -> None:
    with pytest.raises(WireError, match=pattern):
        wire.decode(data)


def _start(**changes: Any) -> bytes:
    obj = CallStart(call="c1").to_json() | changes
    return header(1, flags=FLAG_RELIABLE) + json.dumps(obj).encode()


@pytest.mark.parametrize(
    ("data", "pattern"),
    [
        (_start(codec="pcm"), r"call_start.codec: must be 'opus'"),
        (_start(sample_rate=16000), r"call_start.sample_rate: must be 48000"),
        (_start(channels=3), r"call_start.channels: must be 1 or 2"),
        (_start(channels=True), r"call_start.channels: must be 1 or 2"),
        (_start(ptime_ms=10), r"call_start.ptime_ms: must be 20"),
        (_start(metadata=[1]), r"call_start.metadata: must be a JSON object"),
        (_start(call="x" * 129), r"call_start.call: must be a string of 1..128 characters"),
        (_start(sent_at_ms=None), r"call_start.sent_at_ms: must be an integer 0..9007199254740991"),
        (_start(sent_at_ms=1.5), r"call_start.sent_at_ms: must be an integer"),
        (_start(sent_at_ms=-1), r"call_start.sent_at_ms: must be an integer"),
        (_start(sent_at_ms=2**53), r"call_start.sent_at_ms: must be an integer"),
    ],
)
def test_call_start_schema(data: bytes, pattern: str) -> None:
    with pytest.raises(WireError, match=pattern):
        wire.decode(data)


def test_encode_refuses_what_decode_would_refuse() -> None:
    with pytest.raises(WireError, match=r"call_id: must be an integer 1..18446744073709551615, got 0"):
        wire.encode(Message(MsgType.EVENT, 0, 0, payload=wire.pack_event({"type": "x"})))
    with pytest.raises(WireError, match=r"seq: must be an integer 0..4294967295, got -1"):
        wire.encode(Message(MsgType.AUDIO_OUT, 1, -1, payload=b"x"))
    with pytest.raises(WireError, match=r"timestamp: must be an integer 0..4294967295, got 4294967296"):
        wire.encode(Message(MsgType.AUDIO_OUT, 1, 0, 2**32, payload=b"x"))
    with pytest.raises(WireError, match=r"flags: must fit u16, got 65536"):
        wire.encode(Message(MsgType.AUDIO_OUT, 1, 0, flags=0x10000, payload=b"x"))
    with pytest.raises(WireError, match=r"payload: 1381 bytes, limit 1380 for AUDIO_OUT"):
        wire.encode(Message(MsgType.AUDIO_OUT, 1, 0, payload=b"x" * 1381))
    with pytest.raises(WireError, match=r"payload: 1364 bytes, limit 1363 for MARK"):  # room for the tag
        wire.encode(Message(MsgType.MARK, 1, 0, payload=b"x" * 1364))
    with pytest.raises(WireError, match=r"flags: CALL_END must set RELIABLE"):
        wire.encode(Message(MsgType.CALL_END, 1, 0, payload=wire.pack_call_end("x")))
    with pytest.raises(
        WireError, match=r"header: type and flags must fit u8/u16, call_id u64.*seq=4294967296"
    ):
        wire.encode_audio(MsgType.AUDIO_IN, 1, 2**32, 0, b"x")


def test_payload_builders_name_the_limit() -> None:
    with pytest.raises(WireError, match=r"payload: EVENT JSON is \d+ bytes, limit 1363"):
        wire.pack_event({"type": "t", "text": "x" * 2000})
    with pytest.raises(WireError, match=r"payload: EVENT is not JSON-serialisable"):
        wire.pack_event({"type": "t", "bad": object()})
    with pytest.raises(WireError, match=r"payload: EVENT is not JSON-serialisable"):
        wire.pack_event({"type": "t", "bad": float("nan")})
    with pytest.raises(WireError, match=r'EVENT must be a JSON object with a non-empty "type" string'):
        wire.pack_event({"type": ""})
    with pytest.raises(WireError, match=r"payload: MARK name must be 1..255 bytes of UTF-8, got 256"):
        wire.pack_mark("é" * 128)
    with pytest.raises(WireError, match=r"payload: MARK name is not encodable as UTF-8"):
        wire.pack_mark("\ud800")
    with pytest.raises(WireError, match=r'CALL_END must be a JSON object with a "reason" string of 1..256'):
        wire.pack_call_end("")
    with pytest.raises(WireError, match=r"payload: ACK can only acknowledge a reliable type, not AUDIO_IN"):
        wire.pack_ack(MsgType.AUDIO_IN)
    with pytest.raises(WireError, match=r"barge_in.dropped_frames: must be an integer 0..4294967295, got -1"):
        BargeIn(0, -1, 0).pack()
    with pytest.raises(WireError, match=r"call_start.channels: must be 1 or 2"):
        CallStart(call="c", channels=0).pack()
    with pytest.raises(WireError, match=r"payload: CALL_START JSON is \d+ bytes, limit 1363"):
        CallStart(call="c", metadata={"blob": "x" * 1400}).pack()


def test_audio_in_flag_helpers_reject_bad_levels() -> None:
    with pytest.raises(WireError, match=r"flags.level: must be an integer 0..127 \(-dBov\), got 128"):
        wire.audio_in_flags(level=128)
    with pytest.raises(WireError, match=r"flags.level: must be an integer 0..127 \(-dBov\), got -1"):
        wire.audio_in_flags(level=-1)
    with pytest.raises(WireError, match=r"flags: VOICE needs an audio level \(LEVEL_PRESENT\)"):
        wire.audio_in_flags(voice=True)


def test_u32_diff_orders_across_the_wrap() -> None:
    assert wire.u32_diff(5, 3) == 2
    assert wire.u32_diff(3, 5) == -2
    assert wire.u32_diff(2, 2**32 - 2) == 4
    assert wire.u32_diff(2**32 - 2, 2) == -4


# ---- properties and fuzzing ------------------------------------------------------------------

u32 = st.integers(0, 2**32 - 1)
call_ids = st.integers(1, 2**64 - 1)
json_values = st.recursive(
    st.none() | st.booleans() | st.integers(-(2**53), 2**53) | st.text(max_size=20),
    lambda children: (
        st.lists(children, max_size=4) | st.dictionaries(st.text(max_size=8), children, max_size=4)
    ),
    max_leaves=12,
)


@st.composite
def messages(draw: st.DrawFn) -> Message:
    mtype = draw(st.sampled_from(list(MsgType)))
    call_id, seq, ts = draw(call_ids), draw(u32), draw(u32)
    flags = FLAG_RELIABLE if mtype in wire.CONTROL_TYPES else 0
    if mtype is MsgType.AUDIO_IN:
        level = draw(st.none() | st.integers(0, 127))
        voice = level is not None and draw(st.booleans())
        flags = wire.audio_in_flags(marker=draw(st.booleans()), level=level, voice=voice)
        payload = draw(st.binary(min_size=1, max_size=MAX_PAYLOAD))
    elif mtype is MsgType.AUDIO_OUT:
        flags = FLAG_MARKER if draw(st.booleans()) else 0
        payload = draw(st.binary(min_size=1, max_size=MAX_PAYLOAD))
    elif mtype is MsgType.CALL_START:
        meta = draw(st.dictionaries(st.text(max_size=8), json_values, max_size=3))
        name = draw(st.text(min_size=1, max_size=40))
        payload = CallStart(call=name, channels=draw(st.sampled_from([1, 2])), metadata=meta).pack()
    elif mtype is MsgType.CALL_END:
        payload = wire.pack_call_end(draw(st.text(min_size=1, max_size=100)))
    elif mtype is MsgType.EVENT:
        body = draw(st.dictionaries(st.text(max_size=8), json_values, max_size=4))
        payload = wire.pack_event({**body, "type": draw(st.text(min_size=1, max_size=20))})
        flags = FLAG_RELIABLE if draw(st.booleans()) else 0
    elif mtype is MsgType.MARK:
        name = draw(st.text(min_size=1, max_size=60))
        payload = wire.pack_mark(name)
        flags = FLAG_RELIABLE if draw(st.booleans()) else 0
    elif mtype is MsgType.BARGE_IN:
        payload = BargeIn(draw(u32), draw(u32), draw(u32)).pack()
    elif mtype is MsgType.BARGE_CANDIDATE:
        payload = wire.BargeCandidate(draw(u32), draw(u32)).pack()
    elif mtype is MsgType.BARGE_VERDICT:
        payload = wire.BargeVerdict(draw(u32), draw(st.booleans())).pack()
    elif mtype is MsgType.ACK:
        payload = wire.pack_ack(draw(st.sampled_from([MsgType.CALL_START, MsgType.EVENT, MsgType.CLEAR])))
    else:
        payload = b""
    return Message(mtype, call_id, seq, ts, flags, payload)


@settings(max_examples=400, suppress_health_check=[HealthCheck.too_slow])
@given(messages())
def test_round_trip_property(msg: Message) -> None:
    data = wire.encode(msg)
    assert HEADER_SIZE <= len(data) <= MAX_DATAGRAM
    assert wire.decode(data) == msg


@settings(max_examples=2000)
@given(st.binary(max_size=MAX_DATAGRAM + 40))
def test_fuzz_random_bytes_only_raise_wire_error(data: bytes) -> None:
    try:
        msg = wire.decode(data)
    except WireError:
        return
    # Anything accepted is canonical: it re-encodes to the very same bytes.
    assert wire.encode(msg) == data


@settings(max_examples=2000)
@given(st.sampled_from(list(MsgType)), st.integers(0, 0xFFFF), st.binary(max_size=64))
def test_fuzz_valid_headers_with_random_flags_and_payloads(
    mtype: MsgType, flags: int, payload: bytes
) -> None:
    data = header(int(mtype), flags=flags) + payload
    try:
        msg = wire.decode(data)
    except WireError:
        return
    assert wire.encode(msg) == data


@settings(max_examples=1000, suppress_health_check=[HealthCheck.too_slow])
@given(messages(), st.data())
def test_fuzz_mutated_valid_datagrams(msg: Message, data: st.DataObject) -> None:
    raw = bytearray(wire.encode(msg))
    for _ in range(data.draw(st.integers(1, 4))):
        op = data.draw(st.sampled_from(["flip", "truncate", "append"]))
        if op == "flip" and raw:
            i = data.draw(st.integers(0, len(raw) - 1))
            raw[i] ^= data.draw(st.integers(1, 255))
        elif op == "truncate":
            del raw[data.draw(st.integers(0, len(raw))) :]
        else:
            raw += data.draw(st.binary(min_size=1, max_size=8))
    try:
        back = wire.decode(bytes(raw))
    except WireError:
        return
    assert wire.encode(back) == bytes(raw)


@given(u32, u32)
def test_u32_diff_is_antisymmetric_and_inverts_addition(a: int, b: int) -> None:
    d = wire.u32_diff(a, b)
    assert -(2**31) <= d < 2**31
    assert (b + d) & 0xFFFFFFFF == a
    if d != -(2**31):
        assert wire.u32_diff(b, a) == -d


def test_a_lone_surrogate_escape_is_refused_at_decode_and_a_pair_is_kept() -> None:
    """JavaScript's JSON.stringify of a string cut mid-emoji sends "\\ud83d" alone: valid JSON text, but
    no string a relay can re-encode (GET /v1/calls/{id} answered 500 with it in the call's events)."""

    def event(text: bytes) -> bytes:
        payload = b'{"type":"agent.transcript","text":"' + text + b'"}'
        return wire.HEADER.pack(wire.VERSION, wire.MsgType.EVENT, 0, 7, 1, 0) + payload

    with pytest.raises(wire.WireError, match="lone UTF-16 surrogate"):
        wire.decode(event(b"hi \\ud83d"))
    with pytest.raises(wire.WireError, match="lone UTF-16 surrogate"):
        wire.decode(event(b"\\udc00 tail"))
    assert wire.decode(event(b"\\ud83d\\ude00")).json()["text"] == "\U0001f600"
    assert wire.decode(event(b"caf\\u00e9")).json()["text"] == "caf\u00e9"


# ---- barge-in candidates (additive to v2) ----------------------------------------------------


def test_barge_candidate_and_verdict_round_trip() -> None:
    cand = Message(
        MsgType.BARGE_CANDIDATE, CALL_ID, 3, 9600, FLAG_RELIABLE, wire.BargeCandidate(4, 19_200).pack()
    )
    back = wire.decode(wire.encode(cand))
    assert back.barge_candidate() == wire.BargeCandidate(4, 19_200)
    assert back.timestamp == 9600
    for confirm in (True, False):
        verdict = Message(
            MsgType.BARGE_VERDICT, CALL_ID, 5, 0, FLAG_RELIABLE, wire.BargeVerdict(4, confirm).pack()
        )
        assert wire.decode(wire.encode(verdict)).barge_verdict() == wire.BargeVerdict(4, confirm)
    assert wire.pack_ack(MsgType.BARGE_CANDIDATE) == bytes([10])
    assert wire.pack_ack(MsgType.BARGE_VERDICT) == bytes([11])


@pytest.mark.parametrize(
    ("data", "pattern"),
    [
        (header(10, flags=FLAG_RELIABLE) + bytes(7), "BARGE_CANDIDATE carries exactly 8 bytes, got 7"),
        (header(10) + bytes(8), "BARGE_CANDIDATE must set RELIABLE"),
        (header(11, flags=FLAG_RELIABLE) + bytes(6), "BARGE_VERDICT carries exactly 5 bytes, got 6"),
        (header(11, flags=FLAG_RELIABLE) + bytes(4) + b"\x02", "verdict is 0 .reject. or 1 .confirm., got 2"),
        (header(11) + bytes(5), "BARGE_VERDICT must set RELIABLE"),
        (header(13, flags=FLAG_RELIABLE), "unknown message type 13"),
    ],
)
def test_barge_messages_reject(data: bytes, pattern: str) -> None:
    with pytest.raises(WireError, match=pattern):
        wire.decode(data)


def test_barge_payload_builders_name_the_field() -> None:
    with pytest.raises(WireError, match=r"barge_candidate\.played_samples"):
        wire.BargeCandidate(1, -1).pack()
    with pytest.raises(WireError, match=r"barge_verdict\.candidate"):
        wire.BargeVerdict(2**32, True).pack()
    with pytest.raises(WireError, match=r"barge_verdict\.confirm"):
        wire.BargeVerdict(1, 1).pack()  # type: ignore[arg-type]
