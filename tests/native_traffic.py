"""Traffic for the native-path differential tests, the fuzz target and the sanitizer run.

One generator (``datagram``) draws from a fuzz ``Source`` (hypothesis, or a seeded ``random.Random``):
valid packets as browsers send them (aiortc's own serializer with mid, audio-level and abs-send-time
extensions over real Opus frames), packets built field by field (CSRCs, padding, one- and two-byte
extensions), then truncated, bit-flipped, forged (random bytes behind a valid SRTP first byte), replayed,
or protected with another key. ``Differential`` feeds the same datagrams to a Python and a native codec,
each with its own SRTP session of the same key, and asserts the same result for every one: the same
packet (every field and the payload bytes) or the same decision (undecryptable, malformed).
"""

from __future__ import annotations

import os
from dataclasses import dataclass, field
from functools import lru_cache
from pathlib import Path
from typing import Any

import pylibsrtp

from splitrelay.relay.media import native
from splitrelay.relay.media.rtp import RtpPacket, build_rtp, one_byte_extensions, two_byte_extensions
from tests.fuzz.engine import Source, chance, choice

AUDIO_LEVEL_ID = 1
MID_ID = 3
PROFILE = pylibsrtp.Policy.SRTP_PROFILE_AES128_CM_SHA1_80


def sessions(key: bytes) -> tuple[pylibsrtp.Session, pylibsrtp.Session]:
    """(receive, send) sessions for ``key`` (30 bytes: AES-128 key + salt), any SSRC."""
    rx = pylibsrtp.Session(
        pylibsrtp.Policy(key=key, ssrc_type=pylibsrtp.Policy.SSRC_ANY_INBOUND, srtp_profile=PROFILE)
    )
    tx = pylibsrtp.Session(
        pylibsrtp.Policy(key=key, ssrc_type=pylibsrtp.Policy.SSRC_ANY_OUTBOUND, srtp_profile=PROFILE)
    )
    return rx, tx


@lru_cache(maxsize=1)
def opus_frames() -> tuple[bytes, ...]:
    """Real Opus frames (speech-like tone and silence, with DTX-sized ones), encoded once."""
    from tests.opus_fixtures import UTTERANCE, clip

    return tuple(clip(UTTERANCE).frames)


def browser_packet(source: Source, seq: int) -> bytes:
    """A packet as a WebRTC sender builds it: aiortc's RtpPacket.serialize with its extension map."""
    from aiortc.rtcrtpparameters import RTCRtpHeaderExtensionParameters, RTCRtpParameters
    from aiortc.rtp import HeaderExtensionsMap
    from aiortc.rtp import RtpPacket as AiortcPacket

    extensions = HeaderExtensionsMap()
    extensions.configure(
        RTCRtpParameters(
            headerExtensions=[
                RTCRtpHeaderExtensionParameters(
                    id=AUDIO_LEVEL_ID, uri="urn:ietf:params:rtp-hdrext:ssrc-audio-level"
                ),
                RTCRtpHeaderExtensionParameters(id=MID_ID, uri="urn:ietf:params:rtp-hdrext:sdes:mid"),
                RTCRtpHeaderExtensionParameters(
                    id=2, uri="http://www.webrtc.org/experiments/rtp-hdrext/abs-send-time"
                ),
            ]
        )
    )
    frames = opus_frames()
    packet = AiortcPacket(
        payload_type=111,
        marker=int(chance(source, 20)),
        sequence_number=seq & 0xFFFF,
        timestamp=(seq * 960) & 0xFFFFFFFF,
        ssrc=0x1234ABCD,
    )
    packet.payload = frames[source.integer(0, len(frames) - 1)]
    if chance(source, 2):
        packet.extensions.audio_level = (chance(source, 2), source.integer(0, 127))
    if chance(source, 2):
        packet.extensions.mid = choice(source, ("0", "audio", "a" * 16))
    if chance(source, 3):
        packet.extensions.abs_send_time = source.integer(0, 0xFFFFFF)
    return bytes(packet.serialize(extensions))


def built_packet(source: Source, seq: int) -> bytes:
    """A packet built field by field through every header feature the parser must walk."""
    payload = source.blob(0, 200) or b"\x00"
    extension = b""
    kind = source.integer(0, 3)
    level = bytes((source.integer(0, 255),))
    if kind == 1:
        elements = [(choice(source, (AUDIO_LEVEL_ID, 2, 5, 14)), level)]
        if chance(source, 2):
            elements.append((MID_ID, source.blob(1, 16)))
        extension = one_byte_extensions(elements)
    elif kind == 2:
        value = level if chance(source, 2) else source.blob(0, 20)
        extension = two_byte_extensions(
            [(choice(source, (AUDIO_LEVEL_ID, 7, 255)), value)], source.integer(0, 15)
        )
    elif kind == 3:  # a raw block: any profile, any body
        words = source.integer(0, 4)
        extension = source.blob(2, 2) + words.to_bytes(2, "big") + source.blob(4 * words, 4 * words)
    csrcs = [source.integer(0, 0xFFFFFFFF) for _ in range(source.integer(0, 3) if chance(source, 4) else 0)]
    data = build_rtp(
        source.integer(0, 127),
        seq & 0xFFFF,
        source.integer(0, 0xFFFFFFFF),
        source.integer(0, 0xFFFFFFFF),
        payload,
        marker=chance(source, 2),
        extension=extension,
        csrcs=csrcs,
    )
    if chance(source, 5):  # padding: a count in the last byte, sometimes a lying one
        count = source.integer(0, 255) if chance(source, 3) else source.integer(1, 4)
        data = bytes((data[0] | 0x20,)) + data[1:] + bytes(max(0, count - 1)) + bytes((count,))
    return data


def mutate(source: Source, data: bytes) -> bytes:
    """A byte-level change: truncation, a flipped bit, a set byte, or junk appended."""
    how = source.integer(0, 3)
    if how == 0 or not data:
        return data[: source.integer(0, len(data))]
    if how == 1:
        i = source.integer(0, len(data) - 1)
        return data[:i] + bytes((data[i] ^ (1 << source.integer(0, 7)),)) + data[i + 1 :]
    if how == 2:
        i = source.integer(0, len(data) - 1)
        return data[:i] + bytes((source.integer(0, 255),)) + data[i + 1 :]
    return data + source.blob(1, 40)


@dataclass
class Differential:
    """Two codecs over sessions of one key, one Python (the reference), one native."""

    key: bytes = field(default_factory=lambda: os.urandom(30))
    compared: int = 0

    def __post_init__(self) -> None:
        self.python = native.PythonCodec(*sessions(self.key))
        self.native = native.NativeCodec(*sessions(self.key))
        self.sender = sessions(self.key)[1]
        self.forger = sessions(os.urandom(30))[1]

    def check_inbound(self, datagram: bytes, audio_level_id: int | None = AUDIO_LEVEL_ID) -> RtpPacket | int:
        """Both codecs take ``datagram``; their results must be equal (packet or decision)."""
        expected = self.python.unprotect_parse(datagram, audio_level_id, 42)
        got = self.native.unprotect_parse(datagram, audio_level_id, 42)
        self.compared += 1
        assert got == expected, f"native {got!r} != python {expected!r} <- {datagram.hex()}"
        if isinstance(expected, RtpPacket):
            assert type(got.payload) is bytes and type(got.marker) is bool and type(got.voice) is bool  # type: ignore[union-attr]
        return expected

    def check_outbound(
        self, pt: int, seq: int, ts: int, ssrc: int, marker: bool, extension: bytes, payload: bytes
    ) -> bytes | None:
        """Both codecs protect the same packet; the bytes (or the refusal) must be identical."""
        outcomes: list[Any] = []
        for codec in (self.python, self.native):
            try:
                outcomes.append(codec.protect_rtp(pt, seq, ts, ssrc, marker, extension, payload))
            except ValueError:
                outcomes.append(ValueError)
        self.compared += 1
        assert outcomes[0] == outcomes[1], f"protect: python {outcomes[0]!r} != native {outcomes[1]!r}"
        return None if outcomes[0] is ValueError else outcomes[0]


def one_round(source: Source, diff: Differential, seq: int) -> None:
    """One drawn datagram (and sometimes its replay) through both codecs, plus one protect."""
    plain = browser_packet(source, seq) if chance(source, 2) else built_packet(source, seq)
    how = source.integer(0, 5)
    if how == 0:
        datagram = diff.sender.protect(plain)
    elif how == 1:
        datagram = mutate(source, diff.sender.protect(plain))
    elif how == 2:  # forged: SRTP-looking bytes under another key
        datagram = diff.forger.protect(plain)
    elif how == 3:  # forged: random bytes behind a valid first byte
        datagram = bytes((source.integer(128, 191),)) + source.blob(0, 300)
    elif how == 4:  # oversize
        datagram = diff.sender.protect(plain) + bytes(source.integer(1200, 1700))
    else:
        datagram = diff.sender.protect(plain)
        diff.check_inbound(datagram)  # and then its replay, which both must refuse
    level_id = choice(source, (AUDIO_LEVEL_ID, None, 0, 2, 14, 255))
    diff.check_inbound(datagram, level_id)
    diff.check_outbound(
        source.integer(0, 127),
        seq & 0xFFFF,
        source.integer(0, 0xFFFFFFFF),
        source.integer(0, 0xFFFFFFFF),
        chance(source, 2),
        one_byte_extensions([(AUDIO_LEVEL_ID, bytes((source.integer(0, 255),)))])
        if chance(source, 2)
        else b"",
        source.blob(1, 1400) if chance(source, 8) else source.blob(1, 200),
    )


def check_parse(data: bytes, audio_level_id: int | None) -> None:
    """Stateless parse, native vs ``rtp.parse_rtp``: equal packets, or ValueError from both."""
    from splitrelay.relay.media.rtp import parse_rtp

    try:
        expected: RtpPacket | type[ValueError] = parse_rtp(data, audio_level_id, 5)
    except ValueError:
        expected = ValueError
    try:
        got: RtpPacket | type[ValueError] = native.parse_rtp(data, audio_level_id, 5)
    except ValueError:
        got = ValueError
    assert got == expected, f"parse: native {got!r} != python {expected!r} <- {data.hex()}"


CAPTURE = Path(__file__).resolve().parent / "unit" / "data" / "native_capture.json"
"""One real call's SRTP both ways with its negotiated keys (tests/integration/test_native_fastpath.py
writes it with SPLITRELAY_WRITE_NATIVE_CAPTURE=1)."""


def _session(key: bytes, profile: int, window: int) -> pylibsrtp.Session:
    """A receive session as aiortc builds it (its window and repeat policy)."""
    policy = pylibsrtp.Policy(key=key, ssrc_type=pylibsrtp.Policy.SSRC_ANY_INBOUND, srtp_profile=profile)
    policy.allow_repeat_tx = True
    policy.window_size = window
    return pylibsrtp.Session(policy)


def replay_capture(side: dict[str, Any]) -> list[RtpPacket]:
    """One direction of a capture through a Python and a native codec: equal packets, all authentic."""
    key, profile, window = bytes.fromhex(side["key"]), int(side["profile"]), int(side["window"])
    python = native.PythonCodec(_session(key, profile, window), None)
    fast = native.NativeCodec(_session(key, profile, window), _session(key, profile, window))
    packets: list[RtpPacket] = []
    for text in side["datagrams"]:
        datagram = bytes.fromhex(text)
        expected = python.unprotect_parse(datagram, side["audio_level_id"], 0)
        got = fast.unprotect_parse(datagram, side["audio_level_id"], 0)
        assert got == expected, f"captured datagram: native {got!r} != python {expected!r}"
        assert isinstance(expected, RtpPacket), f"captured datagram not authentic: {expected}"
        packets.append(expected)
    return packets
