"""Fuzz target 1: the wire decoder and its authentication (wire v2). Only ``WireError`` escapes ``decode``;
what it accepts re-encodes byte for byte (``encode(decode(d)) == d``), and every message it accepts reads
back through its typed accessor without any other exception. Sealed datagrams (``wire_auth.Sealer``) open
only unchanged and only in the direction they were sealed for: a changed byte, a truncation or a
reflected datagram never verifies.

Inputs are valid datagrams of every type (built through the public ``encode``) then mutated at the byte
level, header fields set to edge values, or payloads swapped for hostile JSON, so most reach the payload
checks rather than dying on the version byte.
"""

from __future__ import annotations

import asyncio
import struct

import pytest

from splitrelay.inference import wire
from splitrelay.inference.wire import BargeIn, CallStart, Message, MsgType, WireError
from splitrelay.inference.wire_auth import Sealer, WireKey, WireKeyring
from tests.fuzz.engine import Source, chance, choice, run_target
from tests.fuzz.mutate import INTERESTING_INTS, dumps, hostile_raw, mutate_bytes, mutate_doc

pytestmark = pytest.mark.fuzz

_ACKABLE = (
    MsgType.CALL_START,
    MsgType.CALL_END,
    MsgType.BARGE_IN,
    MsgType.MARK,
    MsgType.EVENT,
    MsgType.CLEAR,
    MsgType.BARGE_CANDIDATE,
    MsgType.BARGE_VERDICT,
)


KEYRING = WireKeyring(WireKey.generate())
RELAY = Sealer(KEYRING, "relay")
INFERENCE = Sealer(KEYRING, "inference")


def _u32(source: Source) -> int:
    return choice(source, (0, 1, wire.U32, source.integer(0, wire.U32)))


def valid_message(source: Source) -> Message:
    """A message ``encode`` accepts, of any type."""
    mtype = choice(source, list(MsgType))
    flags = wire.FLAG_RELIABLE if mtype in wire.CONTROL_TYPES else 0
    payload = b""
    if mtype is MsgType.AUDIO_IN:
        level = None if chance(source, 3) else source.integer(0, wire.MAX_LEVEL)
        voice = level is not None and chance(source, 2)
        flags = wire.audio_in_flags(marker=chance(source, 2), level=level, voice=voice)
        payload = source.blob(1, 200)
    elif mtype is MsgType.AUDIO_OUT:
        flags = wire.FLAG_MARKER if chance(source, 2) else 0
        payload = source.blob(1, 200)
    elif mtype is MsgType.CALL_START:
        metadata = {"caller": "x", "n": source.integer(0, 9)} if chance(source, 2) else {}
        sent_at_ms = choice(source, (0, 1_764_900_000_000, wire.MAX_SENT_AT_MS))
        payload = CallStart(
            call=f"call-{source.integer(0, 999)}",
            channels=source.integer(1, 2),
            metadata=metadata,
            sent_at_ms=sent_at_ms,
        ).pack()
    elif mtype is MsgType.CALL_END:  # the empty payload is the compact "unknown_call" reply
        payload = (
            b"" if chance(source, 4) else wire.pack_call_end(choice(source, ("hangup", "timeout", "é" * 10)))
        )
    elif mtype is MsgType.EVENT:
        payload = wire.pack_event({"type": choice(source, ("transcript", "x")), "text": "hello"})
        flags = wire.FLAG_RELIABLE if chance(source, 2) else 0
    elif mtype is MsgType.MARK:
        payload = wire.pack_mark(choice(source, ("m", "turn-1", "é" * 100)))
        flags = wire.FLAG_RELIABLE if chance(source, 2) else 0
    elif mtype is MsgType.BARGE_IN:
        payload = BargeIn(_u32(source), _u32(source), _u32(source)).pack()
    elif mtype is MsgType.BARGE_CANDIDATE:
        payload = wire.BargeCandidate(_u32(source), _u32(source)).pack()
    elif mtype is MsgType.BARGE_VERDICT:
        payload = wire.BargeVerdict(_u32(source), chance(source, 2)).pack()
    elif mtype is MsgType.ACK:
        payload = wire.pack_ack(choice(source, _ACKABLE))
    call_id = choice(source, (1, wire.U64, source.integer(1, wire.U64)))
    return Message(mtype, call_id, _u32(source), _u32(source), flags, payload)


def datagram(source: Source) -> bytes:
    data = wire.encode(valid_message(source))
    how = source.integer(0, 5)
    if how == 0:
        return data  # valid as built: must round-trip
    if how == 1:  # header fields at edge values, payload kept
        version, type_, flags, call_id, seq, ts = wire.HEADER.unpack_from(data)
        field = source.integer(0, 3)
        if field == 0:
            version = choice(source, (0, 2, 255, wire.VERSION))
        elif field == 1:
            type_ = choice(source, (0, 12, 255, *range(1, 12)))
        elif field == 2:
            flags = choice(source, (0xFFFF, 1 << source.integer(0, 15), source.integer(0, 0xFFFF)))
        else:
            call_id = choice(source, (0, 1, wire.U64))
        return wire.HEADER.pack(version, type_, flags, call_id, seq, ts) + data[wire.HEADER_SIZE :]
    if how == 2:  # a JSON type carrying a mutated or hostile document
        header = wire.HEADER.pack(wire.VERSION, choice(source, (1, 2, 7)), wire.FLAG_RELIABLE, 1, 0, 0)
        base = {"call": "c", "codec": "opus", "sample_rate": 48000, "channels": 1, "ptime_ms": 20,
                "sent_at_ms": 1_764_900_000_000, "metadata": {}, "reason": "x", "type": "e"}  # fmt: skip
        text = dumps(mutate_doc(source, base) if chance(source, 2) else hostile_raw(source))
        return header + text.encode("utf-8", "surrogatepass")[: wire.MAX_PAYLOAD + source.integer(0, 40)]
    if how == 3:  # sizes around the limits
        return data[: source.integer(0, len(data))] + bytes(
            source.integer(0, wire.MAX_DATAGRAM + 8 - len(data)) % 1500
        )
    return mutate_bytes(source, data, max_len=wire.MAX_DATAGRAM + 64)


def check_datagram(data: bytes) -> None:
    """The oracle: WireError or an exact round trip, and the typed payload readable."""
    try:
        msg = wire.decode(data)
    except WireError:
        return
    except Exception as exc:
        raise AssertionError(f"decode raised {type(exc).__name__}: {exc} <- {data!r}") from exc
    try:
        again = wire.encode(msg)
    except Exception as exc:
        raise AssertionError(f"encode of an accepted datagram raised {exc!r} <- {data!r}") from exc
    assert again == data, f"accepted datagram does not re-encode identically <- {data!r}"
    accessor = {
        MsgType.CALL_START: msg.call_start,
        MsgType.CALL_END: msg.reason,
        MsgType.EVENT: msg.json,
        MsgType.BARGE_IN: msg.barge_in,
        MsgType.BARGE_CANDIDATE: msg.barge_candidate,
        MsgType.BARGE_VERDICT: msg.barge_verdict,
        MsgType.MARK: msg.mark_name,
        MsgType.ACK: msg.acked_type,
    }.get(msg.type)
    if accessor is not None:
        try:
            accessor()
        except Exception as exc:
            raise AssertionError(f"accepted {msg.type.name} payload unreadable: {exc!r} <- {data!r}") from exc
    if msg.type in wire.JSON_TYPES and msg.payload:  # (an empty CALL_END is the compact form, no JSON)
        doc = msg.json()
        wire.pack_json(doc)  # what was accepted can be sent on (no lone surrogate, no non-finite number)


def check_sealed(source: Source) -> None:
    """The authentication oracle: a body the relay sealed opens at inference to exactly that body, and
    nothing else opens: not a changed or cut datagram, not the datagram reflected back to the relay."""
    body = wire.encode(valid_message(source))
    sealed = RELAY.seal(body)
    data = sealed if chance(source, 4) else mutate_bytes(source, sealed, max_len=wire.MAX_DATAGRAM + 64)
    opened = INFERENCE.open(data)
    if data == sealed:
        assert opened == (body, KEYRING.current.key_id), f"a sealed datagram did not open <- {data!r}"
        assert RELAY.open(data) is None, f"a datagram opened in the direction it came from <- {data!r}"
    else:
        assert opened is None, f"a changed datagram verified: {opened!r} <- {data!r}"
    if opened is not None:
        check_datagram(opened[0])


async def one_datagram(source: Source) -> None:
    if chance(source, 4):
        check_sealed(source)
    else:
        check_datagram(datagram(source))


def test_wire_decoder_raises_only_wire_error_and_round_trips() -> None:
    with asyncio.Runner() as runner:
        run_target("wire", runner, one_datagram)


def test_the_oracle_catches_a_decoder_that_raises_something_else(monkeypatch: pytest.MonkeyPatch) -> None:
    """The target can fail: a decoder leaking ``struct.error`` on a datagram of another version is caught."""
    real = wire.decode

    def leaky(data: bytes | bytearray | memoryview) -> Message:
        if len(data) >= wire.HEADER_SIZE and data[0] != wire.VERSION:
            raise struct.error("unpack requires a buffer")
        return real(data)

    monkeypatch.setattr(wire, "decode", leaky)
    with asyncio.Runner() as runner, pytest.raises(AssertionError, match="decode raised error"):
        run_target("wire-injected", runner, one_datagram, examples=300)


def test_the_oracle_catches_a_verifier_that_skips_the_tag(monkeypatch: pytest.MonkeyPatch) -> None:
    """The target can fail: an opener that checks the key id but not the tag is caught forging."""

    real = Sealer.open

    def trusting(self: Sealer, data: bytes) -> tuple[bytes, int] | None:
        if self is RELAY:
            return real(self, data)
        if len(data) < wire.HEADER_SIZE + 17 or KEYRING.get(data[-17]) is None:
            return None
        return data[:-17], data[-17]

    monkeypatch.setattr(Sealer, "open", trusting)
    with asyncio.Runner() as runner, pytest.raises(AssertionError, match="a changed datagram verified"):
        run_target("wire-injected-auth", runner, one_datagram, examples=300)


def test_interesting_ints_cover_the_u32_and_u64_edges() -> None:
    assert {wire.U32, 2**32, 2**63, 2**64} <= {i + 1 for i in INTERESTING_INTS} | set(INTERESTING_INTS)
