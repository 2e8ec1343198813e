"""The native per-datagram path: SRTP, RTP parse/build and wire framing in C, the Python path as reference.

Why: the relay spends most of a datagram's cost in Python dispatch around small steps (unprotect, header
parse, header build, protect), each one a call into C with its own allocations (issue 17). Here each
direction is one call into ``fastpath.c`` over reused buffers; the SRTP itself still runs in the libsrtp
pylibsrtp loaded (its session pointers and functions are passed in), so keys and replay windows live in
one place and both paths can serve the same session.

Two codecs with the same methods: ``PythonCodec`` (pylibsrtp + ``rtp.py``: the reference) and
``NativeCodec``. ``codec(rx, tx)`` returns the native one when the extension is built and usable, else the
Python one, and the process log says which once. ``SPLITRELAY_NATIVE=0`` forces the Python path (the A/B
of ``splitrelay bench relay``). The module-level ``parse_rtp``, ``encode_audio`` and ``speech_hint`` have
the reference's signatures, for the differential tests and the fuzz target.

Python keeps the decisions: what is media and what goes to aioice/aiortc (``classify``), undecryptable or
malformed packets (counted), new sources, RTCP, and barge-in (``speech_hint`` says when a packet needs a
decode at all).
"""

from __future__ import annotations

import importlib
import logging
import math
import os
import socket
import struct
from collections.abc import Callable, Iterable
from typing import Any, Final, Protocol

import pylibsrtp

from splitrelay.relay.media.rtp import RtpPacket, pack_header
from splitrelay.relay.media.rtp import parse_rtp as py_parse_rtp

logger = logging.getLogger("splitrelay.native")

NATIVE_ENV: Final = "SPLITRELAY_NATIVE"
"""Set to 0 (or off/false/no) to force the pure-Python path."""

UNDECRYPTABLE: Final = -1
"""``unprotect_parse``: SRTP authentication or replay check failed (or the datagram is too long)."""
MALFORMED: Final = -2
"""``unprotect_parse``: authentic, but not a valid RTP packet."""

KIND_OTHER: Final = 0
KIND_SRTP: Final = 1
KIND_SRTCP: Final = 2

HINT_SILENCE: Final = 0
HINT_SPEECH: Final = 1
HINT_DECODE: Final = 2

WIRE_VERSION: Final = 2  # relay/inference/wire.py VERSION (media may not import the SDK: layering)
WIRE_HEADER: Final = struct.Struct("!BBHQII")
WIRE_MAX_PAYLOAD: Final = 1380
DTX_MAX_BYTES: Final = 2
SRTP_BUFFER: Final = 1500  # pylibsrtp's per-session buffer, the limit on both paths
_EXPECTED_SRTP_TYPE: Final = "srtp_err_status_t(*)(struct srtp_ctx_t_ *, void *, int *)"
_RESULT: Final = struct.Struct("=iiiIIiiiii")  # sr_rtp, field by field
_SR_TOO_LONG: Final = -101
_SR_UNDECRYPTABLE: Final = -100

_native: Any = None
_native_reason = "not loaded yet"
_announced = False


def _load() -> tuple[Any, str]:
    """The compiled module and pylibsrtp's functions, or None and why not."""
    if os.environ.get(NATIVE_ENV, "1").strip().lower() in ("0", "off", "false", "no"):
        return None, f"{NATIVE_ENV}=0 forces the Python path"
    try:
        fastpath = importlib.import_module("splitrelay.relay.media.native._fastpath")
    except ImportError as exc:
        return None, f"extension not built ({exc}); build it with `make setup`"
    try:
        binding = pylibsrtp._binding
        ffi, lib = binding.ffi, binding.lib
        for name in ("srtp_protect", "srtp_unprotect"):
            kind = str(ffi.typeof(ffi.addressof(lib, name)).cname)
            if kind != _EXPECTED_SRTP_TYPE:
                return None, f"pylibsrtp's {name} is {kind}, not the libsrtp 2 call the extension makes"
    except (AttributeError, TypeError) as exc:
        return None, f"pylibsrtp {getattr(pylibsrtp, '__version__', '?')} has no usable binding ({exc})"
    return fastpath, "native"


def available() -> bool:
    """True when the native path is built, loadable and not forced off (loads it on first call)."""
    global _native, _native_reason
    if _native is None and _native_reason == "not loaded yet":
        _native, _native_reason = _load()
    return _native is not None


def status() -> str:
    """``native`` or why the Python path runs."""
    available()
    return _native_reason


def reset() -> None:
    """Forget the load decision (tests flip SPLITRELAY_NATIVE)."""
    global _native, _native_reason, _announced
    _native, _native_reason, _announced = None, "not loaded yet", False


def _announce() -> None:
    global _announced
    if not _announced:
        _announced = True
        if _native is not None:
            logger.info("fast path: native per-datagram path (relay/media/native)")
        else:
            logger.warning("fast path: Python per-datagram path: %s", _native_reason)


def _srtp_functions() -> tuple[int, int, Any]:
    binding = pylibsrtp._binding
    ffi, lib = binding.ffi, binding.lib
    protect = int(ffi.cast("uintptr_t", ffi.addressof(lib, "srtp_protect")))
    unprotect = int(ffi.cast("uintptr_t", ffi.addressof(lib, "srtp_unprotect")))
    return protect, unprotect, ffi


def _session_pointer(session: pylibsrtp.Session, ffi: Any) -> int:
    """The ``srtp_t`` inside a pylibsrtp Session (private: ``_srtp``, pinned with pylibsrtp 1.0.0)."""
    return int(ffi.cast("uintptr_t", session._srtp[0]))


# --- the two codecs -----------------------------------------------------------------------------------


class PythonCodec:
    """The reference: pylibsrtp for SRTP, ``rtp.py`` for the header."""

    native = False
    __slots__ = ("rx", "tx")

    def __init__(self, rx: Any, tx: Any) -> None:
        self.rx = rx
        self.tx = tx

    def unprotect_parse(self, data: bytes, audio_level_id: int | None, arrival_ns: int) -> RtpPacket | int:
        """An SRTP datagram to its RTP packet, or UNDECRYPTABLE / MALFORMED."""
        try:
            plain = self.rx.unprotect(data)
        except (pylibsrtp.Error, ValueError):  # ValueError: longer than pylibsrtp's buffer
            return UNDECRYPTABLE
        try:
            return py_parse_rtp(plain, audio_level_id, arrival_ns)
        except ValueError:
            return MALFORMED

    def protect_rtp(
        self,
        payload_type: int,
        sequence: int,
        timestamp: int,
        ssrc: int,
        marker: bool,
        extension: bytes,
        payload: bytes,
    ) -> bytes | None:
        """Our RTP packet, protected; None when libsrtp refused. Raises ValueError when too long."""
        packet = pack_header(payload_type, sequence, timestamp, ssrc, marker, bool(extension))
        try:
            protected: bytes = self.tx.protect(packet + extension + payload)
        except pylibsrtp.Error:
            return None
        return protected


class NativeCodec:
    """The same two steps in one call each into ``fastpath.c`` (see the module docstring)."""

    native = True
    __slots__ = (
        "_ext_keep",
        "_in",
        "_in_mem",
        "_lib",
        "_out",
        "_out_mem",
        "_protect",
        "_result",
        "_result_mem",
        "_rx_ptr",
        "_tx_ptr",
        "_unprotect",
        "rx",
        "tx",
    )

    def __init__(self, rx: pylibsrtp.Session, tx: pylibsrtp.Session) -> None:
        if not available():
            raise RuntimeError(f"native fast path unavailable: {_native_reason}")
        module = _native
        self.rx = rx  # kept: the sessions own the srtp_t pointers used below
        self.tx = tx
        self._protect, self._unprotect, srtp_ffi = _srtp_functions()
        self._rx_ptr = _session_pointer(rx, srtp_ffi)
        self._tx_ptr = _session_pointer(tx, srtp_ffi)
        ffi = module.ffi
        self._lib = module.lib
        self._in = ffi.new("unsigned char[]", SRTP_BUFFER)
        self._in_mem = ffi.buffer(self._in)
        self._out = ffi.new("unsigned char[]", SRTP_BUFFER)
        self._out_mem = ffi.buffer(self._out)
        self._result = ffi.new("sr_rtp *")
        self._result_mem = ffi.buffer(self._result)
        self._ext_keep = b""

    @property
    def tx_pointer(self) -> int:
        """The sending session's ``srtp_t`` (for the outbound C path's entry)."""
        return int(self._tx_ptr)

    @property
    def rx_pointer(self) -> int:
        """The receiving session's ``srtp_t`` (for the per-batch path's call slot)."""
        return int(self._rx_ptr)

    def unprotect_parse(self, data: bytes, audio_level_id: int | None, arrival_ns: int) -> RtpPacket | int:
        """An SRTP datagram to its RTP packet, or UNDECRYPTABLE / MALFORMED (as ``PythonCodec``)."""
        n = self._lib.sr_unprotect_parse(
            self._unprotect,
            self._rx_ptr,
            data,
            len(data),
            self._in,
            SRTP_BUFFER,
            -1 if audio_level_id is None else audio_level_id,
            self._result,
        )
        if n < 0:
            return UNDECRYPTABLE if n <= _SR_UNDECRYPTABLE else MALFORMED
        pt, marker, seq, ts, ssrc, off, size, level, voice, csrc = _RESULT.unpack_from(self._result_mem)
        return RtpPacket(
            pt,
            marker == 1,
            seq,
            ts,
            ssrc,
            self._in_mem[off : off + size],
            None if level < 0 else level,
            voice == 1,
            csrc,
            arrival_ns,
        )

    def protect_rtp(
        self,
        payload_type: int,
        sequence: int,
        timestamp: int,
        ssrc: int,
        marker: bool,
        extension: bytes,
        payload: bytes,
    ) -> bytes | None:
        """Header, extension and payload built and protected in one call; as ``PythonCodec``."""
        n = self._lib.sr_protect_rtp(
            self._protect,
            self._tx_ptr,
            self._out,
            SRTP_BUFFER,
            pylibsrtp.SRTP_MAX_TRAILER_LEN,
            payload_type,
            sequence,
            timestamp,
            ssrc,
            marker,
            extension,
            len(extension),
            payload,
            len(payload),
        )
        if n < 0:
            if n == _SR_UNDECRYPTABLE:
                return None
            raise ValueError("packet is too long" if n == _SR_TOO_LONG else "RTP header field out of range")
        protected: bytes = self._out_mem[:n]
        return protected


Codec = PythonCodec | NativeCodec


def codec(rx: Any, tx: Any) -> Codec:
    """The native codec for pylibsrtp sessions when it is available, else the reference; logs once."""
    use_native = available() and isinstance(rx, pylibsrtp.Session) and isinstance(tx, pylibsrtp.Session)
    _announce()
    return NativeCodec(rx, tx) if use_native else PythonCodec(rx, tx)


# --- stateless steps with the reference's signatures ------------------------------------------------


def parse_rtp(data: bytes, audio_level_id: int | None = None, arrival_ns: int = 0) -> RtpPacket:
    """``rtp.parse_rtp`` in C: the same packet, or ValueError for the same inputs."""
    if not available():
        return py_parse_rtp(data, audio_level_id, arrival_ns)
    ffi, lib = _native.ffi, _native.lib
    result = ffi.new("sr_rtp *")
    status = lib.sr_parse_rtp(data, len(data), -1 if audio_level_id is None else audio_level_id, result)
    if status < 0:
        raise ValueError(f"RTP packet: malformed (native parser rule {-status})")
    level = result.audio_level
    off, size = result.payload_offset, result.payload_length
    return RtpPacket(
        result.payload_type,
        bool(result.marker),
        result.sequence,
        result.timestamp,
        result.ssrc,
        data[off : off + size],
        None if level < 0 else level,
        bool(result.voice),
        result.csrc_count,
        arrival_ns,
    )


def py_encode_audio(
    type_: int, call_id: int, seq: int, timestamp: int, payload: bytes, flags: int = 0
) -> bytes:
    """Reference of the wire's audio framing (relay/inference/wire.py ``encode_audio``), ValueError on bad
    input (the SDK's WireError is a ValueError; media may not import the SDK)."""
    if not 0 < len(payload) <= WIRE_MAX_PAYLOAD:
        raise ValueError(f"payload: an Opus frame is 1..{WIRE_MAX_PAYLOAD} bytes, got {len(payload)}")
    try:
        return WIRE_HEADER.pack(WIRE_VERSION, type_, flags, call_id, seq, timestamp) + payload
    except struct.error:
        raise ValueError("header: a field is out of range") from None


def encode_audio(type_: int, call_id: int, seq: int, timestamp: int, payload: bytes, flags: int = 0) -> bytes:
    """The wire's AUDIO_IN/AUDIO_OUT datagram in C; the same bytes or ValueError as ``py_encode_audio``."""
    if not available():
        return py_encode_audio(type_, call_id, seq, timestamp, payload, flags)
    if not (0 <= call_id <= 0xFFFFFFFFFFFFFFFF and 0 <= seq <= 0xFFFFFFFF and 0 <= timestamp <= 0xFFFFFFFF):
        raise ValueError("header: a field is out of range")
    ffi, lib = _native.ffi, _native.lib
    out = ffi.new("unsigned char[]", WIRE_HEADER.size + WIRE_MAX_PAYLOAD)
    n = lib.sr_wire_audio(out, len(out), type_, flags, call_id, seq, timestamp, payload, len(payload))
    if n < 0:
        raise ValueError("payload or header field out of range")
    return bytes(ffi.buffer(out, n))


def threshold_level(threshold_dbov: float) -> int:
    """The largest RFC 6464 level (-dBov) that counts as speech at ``threshold_dbov``."""
    return math.floor(-threshold_dbov)


def py_speech_hint(
    audio_level: int | None, voice: bool, use_voice_bit: bool, threshold_dbov: float, payload_size: int
) -> int:
    """Reference: what ``SpeechDetector.is_speech`` decides without decoding, or HINT_DECODE."""
    if audio_level is not None:
        if voice and use_voice_bit:
            return HINT_SPEECH
        return HINT_SPEECH if -audio_level >= threshold_dbov else HINT_SILENCE
    return HINT_SILENCE if payload_size <= DTX_MAX_BYTES else HINT_DECODE


def speech_hint(
    audio_level: int | None, voice: bool, use_voice_bit: bool, threshold_dbov: float, payload_size: int
) -> int:
    """``py_speech_hint`` in C (the per-packet barge-in question, answered without Python when it can)."""
    if not available():
        return py_speech_hint(audio_level, voice, use_voice_bit, threshold_dbov, payload_size)
    level = -1 if audio_level is None else audio_level
    return int(
        _native.lib.sr_speech_hint(level, voice, use_voice_bit, threshold_level(threshold_dbov), payload_size)
    )


RX_TIMESTAMPS_ENV: Final = "SPLITRELAY_RX_TIMESTAMPS"
"""Set to 0 (or off/false/no) to read the relay's batched sockets without kernel receive timestamps: each
datagram's dwell (and RTCP arrival, and barge-in time) then starts when its batch was read, as before."""


def rx_timestamps_enabled() -> bool:
    """True unless ``SPLITRELAY_RX_TIMESTAMPS`` turns kernel receive timestamps off."""
    return os.environ.get(RX_TIMESTAMPS_ENV, "1").strip().lower() not in ("0", "off", "false", "no")


def rx_timestamps(fd: int) -> bool:
    """Ask the kernel to stamp every datagram ``fd`` receives (fastpath.c ``sr_rx_timestamps``:
    SO_TIMESTAMPNS) when the extension runs and ``SPLITRELAY_RX_TIMESTAMPS`` allows; True when it will."""
    if not available() or not rx_timestamps_enabled():
        return False
    return int(_native.lib.sr_rx_timestamps(fd, 1)) == 0


RECV_SLOT: Final = 4096
"""Bytes per datagram in a batched receive: longer ones are cut by the kernel, dropped and counted (on the
Python path too). Media is at most 1500 bytes (``SRTP_BUFFER``); STUN and DTLS flights stay under the MTU."""
RECV_NAME_SLOT: Final = 28  # sizeof(struct sockaddr_in6): IPv4 and IPv6 sources
RECV_BATCH_MAX: Final = 256  # fastpath.c SR_RECV_MAX


class RecvBatch:
    """``recvmmsg`` into reused buffers (fastpath.c ``sr_recv_batch``): many datagrams per system call.

    ``receive()`` returns how many arrived (0: the socket is empty; negative: -errno). Datagram i is then
    ``payload(i)`` (bytes) from ``lengths[i]`` (-1: longer than ``RECV_SLOT``, cut) and its source is the
    raw ``sockaddr`` ``name(i)``; the shared port (relay/media/shared_port.py) reads them in its own loop.

    ``timed=True`` (the relay's readers): ``receive()`` also fills ``arrivals[i]``, when datagram i entered
    the host in the dwell's clock (``CLOCK_MONOTONIC``, ``time.perf_counter_ns``; fastpath.c
    ``sr_arrivals``), and ``batch_ns``, when the batch was read. With ``stamps=True`` (the socket has
    ``rx_timestamps`` on) the arrival is the kernel's receive stamp; without one it is ``batch_ns``. Neither:
    nothing is timed, whoever reads the batch takes its own time (the bench's load side does).
    """

    __slots__ = (
        "_arrivals",
        "_buffers",
        "_clock",
        "_count",
        "_fd",
        "_lengths",
        "_lib",
        "_name_lengths",
        "_names",
        "_stamps",
        "arrivals",
        "batch_ns",
        "lengths",
        "mem",
        "name_lengths",
        "names_mem",
    )

    def __init__(self, fd: int, count: int = 64, *, timed: bool = False, stamps: bool = False) -> None:
        if not available():
            raise RuntimeError(f"native fast path unavailable: {_native_reason}")
        if not 1 <= count <= RECV_BATCH_MAX:
            raise ValueError(f"count must be 1..{RECV_BATCH_MAX}, got {count}")
        ffi = _native.ffi
        self._lib = _native.lib
        self._fd = fd
        self._count = count
        self._buffers = ffi.new("unsigned char[]", count * RECV_SLOT)
        self._names = ffi.new("unsigned char[]", count * RECV_NAME_SLOT)
        self._lengths = ffi.new("int32_t[]", count)
        self._name_lengths = ffi.new("int32_t[]", count)
        self._stamps: Any = ffi.new("int64_t[]", count) if stamps else ffi.NULL
        self._arrivals: Any = ffi.new("int64_t[]", count) if timed or stamps else ffi.NULL
        self._clock: Any = ffi.NULL
        self.mem = ffi.buffer(self._buffers)
        self.names_mem = ffi.buffer(self._names)
        self.lengths = memoryview(ffi.buffer(self._lengths)).cast("i")
        self.name_lengths = memoryview(ffi.buffer(self._name_lengths)).cast("i")
        self.arrivals = memoryview(ffi.buffer(self._arrivals) if self._arrivals else b"").cast("q")
        """Each datagram's arrival (``timed``: by ``receive()``, or by a drain over this batch)."""
        self.batch_ns = 0
        """When ``receive()`` returned its last batch (``timed``), in the same clock."""

    @property
    def stamps(self) -> bool:
        """True when kernel receive stamps are read with each batch."""
        return bool(self._stamps)

    def set_clock(self, clock: Callable[[int], int] | None) -> None:
        """The clock ``arrivals`` are in (None: ``CLOCK_MONOTONIC``); tests give a fake one, asked as the
        per-batch paths ask theirs (``CLOCK_ARRIVAL`` for the batch, ``CLOCK_RECEIVED`` per stamped
        datagram)."""
        ffi = _native.ffi
        self._clock = ffi.NULL if clock is None else ffi.callback("int64_t(int32_t)", clock)

    def receive(self) -> int:
        n: int = self._lib.sr_recv_batch(
            self._fd,
            self._buffers,
            RECV_SLOT,
            self._names,
            RECV_NAME_SLOT,
            self._lengths,
            self._name_lengths,
            self._count,
            self._stamps,
        )
        if n > 0 and self._arrivals:
            self.batch_ns = self._lib.sr_arrivals(self._clock, self._stamps, n, self._arrivals)
        return n

    @property
    def timed(self) -> bool:
        """True when ``receive()`` fills ``arrivals`` and ``batch_ns``."""
        return bool(self._arrivals)


NATIVE_DRAIN_ENV: Final = "SPLITRELAY_NATIVE_DRAIN"
"""Set to 0 (or off/false/no) for one C call per batch (Python loops over the batches of a wake-up: the
per-batch path as it was) instead of one per wake-up (``Drain``)."""
DRAIN_DONE: Final = 0  # fastpath.c SR_DRAIN_*
DRAIN_PYTHON: Final = 1
DRAIN_BAD: Final = 2


def native_drain_enabled() -> bool:
    """True unless ``SPLITRELAY_NATIVE_DRAIN`` turns the per-wake-up drain off."""
    return os.environ.get(NATIVE_DRAIN_ENV, "1").strip().lower() not in ("0", "off", "false", "no")


class Drain:
    """One socket drained batch after batch in one C call (fastpath.c ``sr_drain_in``/``sr_drain_out``):
    ``recvmmsg``, the per-batch path, its ``sendmmsg``, the next batch, until the socket is empty, the turns
    are used, or a batch has something for Python (``DRAIN_PYTHON``: ``state.n`` datagrams in ``recv``,
    ``decisions`` and ``state.sent`` say what). ``state`` holds the figures of the last call."""

    __slots__ = ("_call", "_table", "state")

    def __init__(self, call: Any, table: Any, state: Any) -> None:
        self._call = call
        self._table = table
        self.state = state

    def run(self, turns: int, send_fd: int) -> int:
        """Up to ``turns`` batches, C sending on ``send_fd`` (-1: nothing, the datagrams go back to Python):
        ``DRAIN_DONE``, ``DRAIN_PYTHON``, or -errno when ``recvmmsg`` failed."""
        state = self.state
        state.send_fd = send_fd
        status: int = self._call(self._table, state, turns)
        if status == DRAIN_BAD:
            raise ValueError("sr_drain refused its arguments")
        return status


def drain_wakeup(
    drain: Drain,
    run: Callable[[Drain, int], int],
    turns: int,
    batch: int,
    on_error: Callable[[int], bool],
    python_batch: Callable[[int, bool], int],
    stopped: Callable[[], bool] | None = None,
) -> tuple[int, int]:
    """One wake-up of a socket drained in C, as both readers run it (the shared port's and the inference
    socket's): ``run(drain, turns left)`` reads, finishes and sends batch after batch; a batch with datagrams
    for Python goes to ``python_batch(n, c_sent_some)``, which returns the datagrams it counted, and the
    wake-up goes on while the batch was full, turns remain and the reader has not ``stopped``.
    ``on_error(errno)`` says whether a receive error (an ICMP one) may be read past. Returns (datagrams
    delivered, receive calls made)."""
    d = drain.state
    delivered = calls = 0
    for _ in range(turns):  # bounded: each C call makes at least one receive call
        status = run(drain, turns)
        calls += d.calls
        turns -= d.calls
        delivered += d.delivered
        if status != DRAIN_PYTHON:
            if status < 0 and on_error(-status) and turns > 0:
                continue  # an ICMP error took this call; datagrams may wait behind it
            break
        n = d.n
        if d.sent[1] < n:  # else only datagrams C made went back (the socket held data)
            delivered += python_batch(n, bool(d.sent[1]))
        else:
            delivered += n
        if (stopped is not None and stopped()) or n < batch or turns <= 0:
            break  # stopped, the socket is empty, or this wake-up's calls are used
    return delivered, calls


def _drain_state(
    ffi: Any, recv: RecvBatch, decisions: Any, out: Any, out_slot: int, out_lengths: Any, out_index: Any
) -> Any:
    """An ``sr_drain`` over ``recv``'s buffers and a per-batch path's outputs (kept alive by their owners);
    ``recv`` must be ``timed`` (C writes each datagram's arrival into its ``arrivals``)."""
    if not 1 <= recv._count <= RECV_BATCH_MAX:
        raise ValueError(f"batch of {recv._count}")
    if not recv.timed:
        raise ValueError("a drained RecvBatch must be timed")
    d = ffi.new("sr_drain *")
    d.recv_fd = recv._fd
    d.batch = recv._count
    d.buffers = recv._buffers
    d.slot = RECV_SLOT
    d.names = recv._names
    d.name_slot = RECV_NAME_SLOT
    d.lengths = recv._lengths
    d.name_lengths = recv._name_lengths
    d.stamps = recv._stamps
    d.arrivals = recv._arrivals
    d.decisions = decisions
    d.out = out
    d.out_slot = out_slot
    d.out_lengths = out_lengths
    d.out_index = out_index
    d.send_fd = -1
    return d


# --- the per-batch inbound path -------------------------------------------------------------------

GATE_PYTHON: Final = 0
"""During playback every packet of the call goes to Python (the onset gate may change)."""
GATE_SILENT: Final = 1
"""During playback a silent packet changes nothing: C may finish silent packets."""
GATE_TALKING: Final = 2
"""During playback a speech packet changes nothing: C may finish speech packets."""
CLOCK_ARRIVAL: Final = 0  # fastpath.c SR_CLOCK_*: which reading a per-batch path's clock is asked for
CLOCK_SEND: Final = 1
CLOCK_DONE: Final = 2
CLOCK_RECEIVED: Final = 3
"""A fake clock's arrival of the next datagram that came with a kernel stamp (tests: fastpath.c
``sr_arrivals``); the real clock converts the stamp itself."""
PLAYING_ALWAYS: Final = 1 << 62
"""``playing_until`` while frames are queued or playout is paused: playing whatever the arrival time."""
FLOW_CAPACITY: Final = 1 << 15  # flow table slots (half may be used): 16384 (address, SSRC) flows
CALL_CAPACITY: Final = 4096  # demux.DemuxLimits.max_calls
WIRE_OUT_SLOT: Final = WIRE_HEADER.size + WIRE_MAX_PAYLOAD
WIRE_AUDIO_IN: Final = 3  # fastpath.c SR_WIRE_AUDIO_IN: relay/inference/wire.py MsgType.AUDIO_IN
_KEY_LEN: Final = 19


def flow_key(addr: tuple[str, int]) -> bytes:
    """The flow table's address key (fastpath.c ``sr_flow_key``) for a numeric (host, port)."""
    host, port = addr[0], addr[1]
    if ":" in host:
        return b"\x06" + port.to_bytes(2, "big") + socket.inet_pton(socket.AF_INET6, host.partition("%")[0])
    return b"\x04" + port.to_bytes(2, "big") + socket.inet_pton(socket.AF_INET, host) + bytes(12)


def raw_sockaddr(addr: tuple[str, int]) -> bytes:
    """The ``sockaddr_in``/``sockaddr_in6`` the kernel reads for a numeric (host, port)."""
    host, port = addr[0], addr[1]
    if ":" in host:
        family = struct.pack("=H", socket.AF_INET6)
        packed = socket.inet_pton(socket.AF_INET6, host.partition("%")[0])
        return family + struct.pack("!HI16s", port, 0, packed) + struct.pack("=I", 0)
    family = struct.pack("=H", socket.AF_INET)
    return family + struct.pack("!H4s8x", port, socket.inet_pton(socket.AF_INET, host))


class DwellHistogramLike(Protocol):
    """relay/telemetry.py ``DwellHistogram`` as this module sees it (media may not import the relay)."""

    state: Any

    def adopt_state(self, state: Any) -> None: ...


def dwell_state(histogram: DwellHistogramLike) -> Any:
    """The histogram's figures as a C ``sr_dwell`` the per-batch paths observe into: its own if it has one,
    else a new one it adopts (what it held moves there). Owned by the histogram: whoever points C at it
    keeps the histogram alive while it does."""
    if not available():
        raise RuntimeError(f"native fast path unavailable: {_native_reason}")
    ffi = _native.ffi
    state = histogram.state
    if isinstance(state, ffi.CData) and ffi.typeof(state) is ffi.typeof("sr_dwell *"):
        return state
    state = ffi.new("sr_dwell *")
    histogram.adopt_state(state)
    return state


class InboundSlot:
    """One call's place in the per-batch inbound path: the C slot (``sr_call``) and its Python handles.

    The call's sequence unwrapping and timestamp base live in the slot only (``extend``/``base``, the
    Python path uses them too); counters the C path adds are taken with ``take_counts``.
    """

    __slots__ = ("_dwell", "_hinted", "_inbound", "_lib", "c", "detached", "index", "outbound", "peer")

    def __init__(self, inbound: NativeInbound, index: int) -> None:
        self._inbound = inbound
        self._lib = inbound.lib
        self.index = index
        self.c: Any = inbound.calls + index
        self.peer: tuple[str, int] | None = None
        self._dwell: DwellHistogramLike | None = None
        self._hinted: set[tuple[tuple[str, int], int]] = set()
        self.detached = False
        self.outbound: OutboundEntry | None = None
        """The call's entry in the outbound C path, which writes this slot's ``playing_until``: it stops
        when the call's transport closes (``detach``) and forgets the slot when the slot goes."""

    # --- what the fast path (media) writes ----------------------------------------------------

    def configure(self, srtp_pointer: int, payload_types: Iterable[int], audio_level_id: int | None) -> None:
        c = self.c
        c.srtp = srtp_pointer
        c.audio_level_id = -1 if audio_level_id is None else audio_level_id
        for pt in range(128):
            c.pts[pt] = 0
        for pt in payload_types:
            if 0 <= pt < 128:
                c.pts[pt] = 1

    def reception_stats(self, clock_rate: int, first_sequence: int) -> Any:
        """A fresh ``sr_rx_stats`` (owned by the caller, which must outlive its flows)."""
        stats = self._inbound.ffi.new("sr_rx_stats *")
        self._lib.sr_rx_init(stats, clock_rate, first_sequence)
        return stats

    def hint(self, addr: tuple[str, int], ssrc: int, stats: Any) -> None:
        """The Python path accepted a packet of (addr, SSRC) for this call: C may take the next ones."""
        key = (addr[0], addr[1]), ssrc
        if key in self._hinted or len(self._hinted) >= 64 or self.detached:
            return
        try:
            raw = flow_key(addr)
        except (OSError, ValueError):
            return
        if self._lib.sr_flow_set(self._inbound.table, raw, ssrc, self.index, stats) == 0:
            self._hinted.add(key)

    # --- what the call (relay/call.py) writes -------------------------------------------------

    def set_dwell(self, histogram: DwellHistogramLike | None) -> None:
        """C observes the inbound dwell of this call's packets into ``histogram`` (its figures move into a
        C ``sr_dwell``, the one copy the Python path observes into too); None: C observes nothing."""
        self._dwell = histogram
        self.c.dwell = self._inbound.ffi.NULL if histogram is None else dwell_state(histogram)

    def enable(self, wire_id: int, peer: tuple[str, int]) -> None:
        """Let C finish this call's packets, sending AUDIO_IN for ``wire_id`` to ``peer``."""
        raw = raw_sockaddr(peer)
        c = self.c
        c.wire_id = wire_id
        self._inbound.ffi.memmove(c.peer, raw, len(raw))
        c.peer_len = len(raw)
        self.peer = (peer[0], peer[1])
        c.enabled = 0 if self.detached else 1

    def disable(self) -> None:
        self.c.enabled = 0

    def detach(self) -> None:
        """The call's transport closed (its flows left the demultiplexer): C takes nothing more of it."""
        self.detached = True
        self.c.enabled = 0
        if self.outbound is not None:
            self.outbound.disable()
        self._inbound.lib.sr_flow_drop_slot(self._inbound.table, self.index)
        self._hinted.clear()

    @property
    def enabled(self) -> bool:
        return bool(self.c.enabled)

    def set_gate(self, mode: int, threshold: int, use_voice_bit: bool) -> None:
        c = self.c
        c.gate_mode = mode
        c.threshold_level = threshold
        c.use_voice_bit = use_voice_bit

    def set_playing_until(self, until_ns: int) -> None:
        self.c.playing_until = until_ns

    def playing_until_pointer(self) -> Any:
        """Where the outbound C path writes ``playing_until`` after it sent a frame (the same field)."""
        return self._inbound.ffi.addressof(self.c[0], "playing_until")

    def take_idle(self) -> bool:
        """True once after C saw a packet while nothing played (the call's playback-started flag clears)."""
        c = self.c
        if c.idle_seen:
            c.idle_seen = 0
            return True
        return False

    def take_sent(self) -> bool:
        """True once after C sent something to inference for this call (the link's liveness sweep)."""
        c = self.c
        if c.sent:
            c.sent = 0
            return True
        return False

    def take_counts(self) -> tuple[int, int, int, int, int]:
        """(packets, payload bytes, sent to inference, malformed, callback errors) C counted since last."""
        c = self.c
        counts = (c.packets, c.bytes, c.to_inference, c.malformed, c.callback_errors)
        c.packets = c.bytes = c.to_inference = c.malformed = c.callback_errors = 0
        return counts

    # --- state shared by both paths (relay/call.py SequenceUnwrapper and the timestamp base) -----

    def extend(self, seq: int) -> int:
        return int(self._lib.sr_unwrap(self.c, seq))

    def adopt(self, unwrapper: tuple[int, int] | None, ts0: int | None) -> None:
        """Take the state the Python path left (packets handled before the slot was the call's)."""
        c = self.c
        if unwrapper is not None:
            c.has_last, c.last_seq, c.ext = 1, unwrapper[0], unwrapper[1]
        if ts0 is not None:
            c.has_ts0, c.ts0 = 1, ts0

    def base(self, timestamp: int) -> int:
        """The call's first RTP timestamp (set from ``timestamp`` if none yet)."""
        c = self.c
        if not c.has_ts0:
            c.has_ts0 = 1
            c.ts0 = timestamp
        return int(c.ts0)

    @property
    def ts0(self) -> int | None:
        c = self.c
        return int(c.ts0) if c.has_ts0 else None

    def close(self) -> None:
        """The call's fast path closed: forget its flows and give the slot back."""
        self._inbound.release(self)


def rx_update() -> Callable[[Any, int, int, int], int]:
    """fastpath.c ``sr_rx_update`` (RFC 3550 statistics on an ``sr_rx_stats``)."""
    update: Callable[[Any, int, int, int], int] = _native.lib.sr_rx_update
    return update


class _BatchPath:
    """What both per-batch C paths keep for C to fill: a decision per datagram, the datagrams C made (one
    ``out_slot``-byte slot each, with their lengths and the call each is for, ``_out_index``), the sent
    counts, and the clock C reads."""

    def __init__(self, batch: int, out_slot: int) -> None:
        self.ffi = ffi = _native.ffi
        self.lib = _native.lib
        self.batch = batch
        self._out_slot = out_slot
        self._decisions = ffi.new("int8_t[]", batch)
        self.decisions = memoryview(ffi.buffer(self._decisions)).cast("b")
        self._out = ffi.new("unsigned char[]", batch * out_slot)
        self._out_mem = ffi.buffer(self._out)
        self._out_lengths = ffi.new("int32_t[]", batch)
        self.out_lengths = memoryview(ffi.buffer(self._out_lengths)).cast("i")
        self._out_index = ffi.new("int32_t[]", batch)
        self._sent = ffi.new("int32_t[2]")
        self._clock: Any = None
        self.table: Any = None

    def set_clock(self, clock: Callable[[int], int] | None) -> None:
        """The clock C reads (None: CLOCK_MONOTONIC, Python's ``perf_counter_ns``); tests give a fake one,
        called with fastpath.c's event (``CLOCK_ARRIVAL``, ``CLOCK_SEND``, ``CLOCK_DONE``, and in a drain
        ``CLOCK_RECEIVED`` per datagram with a kernel stamp: its arrival)."""
        self._clock = None if clock is None else self.ffi.callback("int64_t(int32_t)", clock)
        self.table.clock = self.ffi.NULL if self._clock is None else self._clock

    def out(self, k: int) -> bytes:
        """Datagram ``k`` C made in the last ``run``."""
        start = k * self._out_slot
        data: bytes = self._out_mem[start : start + self.out_lengths[k]]
        return data

    def _drain_state(self, recv: RecvBatch) -> Any:
        """An ``sr_drain`` over ``recv``'s buffers and these outputs; ``recv`` must read at most ``batch``
        datagrams at a time (the outputs are sized for that)."""
        if recv._count > self.batch:
            raise ValueError(f"batch of {recv._count} > {self.batch}")
        return _drain_state(
            self.ffi, recv, self._decisions, self._out, self._out_slot, self._out_lengths, self._out_index
        )


class NativeInbound(_BatchPath):
    """The per-batch inbound path of one shared port: the flow table, the call slots, reused buffers.

    ``run`` hands fastpath.c ``sr_batch_in`` the batch ``RecvBatch`` just read; ``decisions[i]`` then says
    which datagrams C finished (0) and which Python must route as before (1).
    """

    def __init__(self, batch: int, *, calls: int = CALL_CAPACITY, flows: int = FLOW_CAPACITY) -> None:
        if not available():
            raise RuntimeError(f"native fast path unavailable: {_native_reason}")
        if flows & (flows - 1) or not 16 <= flows <= 1 << 22:
            raise ValueError(f"flows must be a power of two 16..{1 << 22}, got {flows}")
        if not 1 <= calls <= 1 << 20:
            raise ValueError(f"calls must be 1..{1 << 20}, got {calls}")
        if not 1 <= batch <= RECV_BATCH_MAX:
            raise ValueError(f"batch must be 1..{RECV_BATCH_MAX}, got {batch}")
        super().__init__(batch, WIRE_OUT_SLOT)
        ffi = self.ffi
        self.calls = ffi.new("sr_call[]", calls)
        self._flows = ffi.new("sr_flow[]", flows)
        for i in range(flows):
            self._flows[i].slot = -1
        self.table = ffi.new("sr_table *")
        self.table.flows = self._flows
        self.table.capacity = flows
        self.table.calls = self.calls
        self.table.ncalls = calls
        self.table.unprotect = _srtp_functions()[1]
        self._free = list(range(calls - 1, -1, -1))
        self.slots: list[InboundSlot | None] = [None] * calls
        self._plain = ffi.new("unsigned char[]", SRTP_BUFFER)
        self.out_slots = memoryview(ffi.buffer(self._out_index)).cast("i")
        """The call slot of each datagram C made."""

    def open_slot(self) -> InboundSlot | None:
        """A fresh slot for a call, or None when all are taken (the call stays on the Python path)."""
        if not self._free:
            return None
        index = self._free.pop()
        self.ffi.memmove(self.calls + index, bytes(self.ffi.sizeof("sr_call")), self.ffi.sizeof("sr_call"))
        slot = self.slots[index] = InboundSlot(self, index)
        return slot

    def release(self, slot: InboundSlot) -> None:
        if self.slots[slot.index] is not slot:
            return
        slot.c.enabled = 0
        slot.c.dwell = self.ffi.NULL
        slot._dwell = None
        if slot.outbound is not None:
            slot.outbound.unbind()
            slot.outbound = None
        self.lib.sr_flow_drop_slot(self.table, slot.index)
        slot._hinted.clear()
        self.slots[slot.index] = None
        self._free.append(slot.index)

    @property
    def flows(self) -> int:
        return int(self.table.used)

    def run(self, recv: RecvBatch, count: int, fd: int) -> tuple[int, int, int]:
        """C over the first ``count`` datagrams of ``recv`` (a ``timed`` one: each datagram's arrival is in
        its ``arrivals``): (wire datagrams made, sent by C, finished)."""
        if count > self.batch:
            raise ValueError(f"batch of {count} > {self.batch}")
        if not recv.timed:
            raise ValueError("the per-batch inbound path needs a timed RecvBatch")
        nout = self.lib.sr_batch_in(
            self.table,
            recv._buffers,
            RECV_SLOT,
            recv._names,
            RECV_NAME_SLOT,
            recv._lengths,
            recv._name_lengths,
            count,
            recv._arrivals,
            self._plain,
            self._decisions,
            self._out,
            WIRE_OUT_SLOT,
            self._out_lengths,
            self._out_index,
            fd,
            self._sent,
        )
        if nout < 0:
            raise ValueError("sr_batch_in refused its arguments")
        return nout, int(self._sent[0]), int(self._sent[1])

    def drain_for(self, recv: RecvBatch) -> Drain:
        """``recv``'s socket drained batch after batch through this path (``Drain``)."""
        d = self._drain_state(recv)
        d.plain = self._plain
        return Drain(self.lib.sr_drain_in, self.table, d)


# --- the per-batch outbound path (issue 17, step 2) ------------------------------------------------

NATIVE_OUT_ENV: Final = "SPLITRELAY_NATIVE_OUT"
"""Set to 0 (or off/false/no) to keep inference's AUDIO_OUT on the Python path (the A/B's ``python-out``)."""
WIRE_AUDIO_OUT: Final = 4  # fastpath.c SR_WIRE_AUDIO_OUT: relay/inference/wire.py MsgType.AUDIO_OUT
OUT_SLOT: Final = SRTP_BUFFER  # bytes per protected datagram C makes
OUT_IDS: Final = 1 << 13  # call-id table slots (half may be used): more than CALL_CAPACITY calls
EXT_MAX: Final = 32  # fastpath.c SR_EXT_MAX


def native_out_enabled() -> bool:
    """True when the extension runs and ``SPLITRELAY_NATIVE_OUT`` does not turn the outbound C path off."""
    off = os.environ.get(NATIVE_OUT_ENV, "1").strip().lower() in ("0", "off", "false", "no")
    return not off and available()


NATIVE_PACE_ENV: Final = "SPLITRELAY_NATIVE_PACE"
RING_FRAMES: Final = 64  # fastpath.c SR_RING_FRAMES
RING_SLOT: Final = 320  # fastpath.c SR_RING_SLOT
NO_PACE_DUE: Final = (1 << 63) - 1  # sr_out_table.pace_due when C holds no frame


def native_pace_enabled() -> bool:
    """True when the outbound C path runs and ``SPLITRELAY_NATIVE_PACE`` does not turn C pacing off (frames
    that wait for their slot then wait in C: ``sr_pace``)."""
    off = os.environ.get(NATIVE_PACE_ENV, "1").strip().lower() in ("0", "off", "false", "no")
    return not off and native_out_enabled()


HeldFrame = tuple[bytes, int, int, int, bool, bool]
"""(payload, seq, timestamp, arrival_ns, continues, starts_response): relay/playout.py ``_Frame``'s fields."""


def playout_state() -> Any:
    """A zeroed ``sr_playout`` (relay/playout.py keeps its timeline there, the one copy C also uses), or
    None when the outbound C path is off (the playout then keeps a Python object with the same fields)."""
    return _native.ffi.new("sr_playout *") if native_out_enabled() else None


def stream_state() -> Any:
    """A zeroed ``sr_stream`` (an outbound stream's sequence and sender-report counts), or None as above."""
    return _native.ffi.new("sr_stream *") if native_out_enabled() else None


def timestamp_at(state: Any, t_ns: int) -> int:
    """fastpath.c ``sr_timestamp_at`` on an ``sr_playout`` (tests: the same RTP clock as the playout's)."""
    return int(_native.lib.sr_timestamp_at(state, t_ns))


class OutboundEntry:
    """One call's entry in the outbound C path (``sr_out``): where its AUDIO_OUT may be finished in C.

    The call writes what C needs (``bind``) and turns it on and off (``enable``/``disable``); the link maps
    its wire call id to it (``NativeOutbound.map``). The playout and stream structs it points at belong to
    their Python objects; the entry keeps them alive while it points at them.
    """

    __slots__ = ("_dwell", "_keep", "_outbound", "_ring", "c", "handle", "remote", "wire_id")

    def __init__(self, outbound: NativeOutbound, handle: int) -> None:
        self._outbound = outbound
        self.handle = handle
        self.c: Any = outbound.ffi.new("sr_out *")
        self.c.handle = handle
        self._keep: tuple[Any, ...] = ()
        self._dwell: DwellHistogramLike | None = None
        self.remote: tuple[str, int] | None = None
        self.wire_id: int | None = None
        self._ring: Any = None

    def pace_in_c(self) -> bool:
        """Let C hold and pace this call's waiting frames (a ring of ``RING_FRAMES``); False when
        ``SPLITRELAY_NATIVE_PACE`` is 0. The playout takes them back (``take_held``) before it queues."""
        if not native_pace_enabled():
            return False
        if self._ring is None:
            self._ring = self._outbound.ffi.new("sr_ring *")
        self.c.ring = self._ring
        return True

    def held(self) -> int:
        """Frames C holds for this call (relay/playout.py ``HeldFrames``)."""
        ring = self._ring
        return 0 if ring is None else int(ring.count)

    def take_held(self) -> list[HeldFrame]:
        """C's held frames, in order, handed to the playout's queue (C holds none after this)."""
        ring = self._ring
        if ring is None or ring.count <= 0:
            return []
        ffi = self._outbound.ffi
        taken: list[HeldFrame] = []
        head, count = int(ring.head), int(ring.count)
        for k in range(count):
            f = ring.frames[(head + k) % RING_FRAMES]
            payload = bytes(ffi.buffer(f.payload, f.length))
            taken.append(
                (payload, f.seq, f.timestamp, f.arrival_ns, bool(f.continues), bool(f.starts_response))
            )
        ring.count = 0
        ring.head = 0
        return taken

    def bind(
        self,
        *,
        playout: Any,
        stream: Any,
        playing_until: Any,
        tx_pointer: int,
        payload_type: int,
        ssrc: int,
        max_payload: int,
        extension: bytes,
        remote: tuple[str, int],
    ) -> bool:
        """Point the entry at the call's playout and stream state and its send parameters; False (and
        disabled) when something does not fit C (the call keeps the Python path)."""
        c = self.c
        c.enabled = 0
        if playout is None or stream is None or len(extension) > EXT_MAX or not 0 <= payload_type < 128:
            return False
        try:
            raw = raw_sockaddr(remote)
        except (OSError, ValueError):
            return False
        ffi = self._outbound.ffi
        c.playout = playout
        c.stream = stream
        c.playing_until = ffi.NULL if playing_until is None else playing_until
        c.tx = tx_pointer
        c.payload_type = payload_type
        c.ssrc = ssrc
        c.max_payload = max_payload
        ffi.memmove(c.ext, extension, len(extension))
        c.ext_len = len(extension)
        ffi.memmove(c.remote, raw, len(raw))
        c.remote_len = len(raw)
        self.remote = (remote[0], remote[1])
        self._keep = (playout, stream, playing_until)
        return True

    def unbind(self) -> None:
        """Forget the playout, stream, dwell histogram and inbound slot (the call closed, its slot went)."""
        c = self.c
        c.enabled = 0
        c.playout = c.stream = c.playing_until = c.dwell = c.ring = self._outbound.ffi.NULL
        self._keep = ()
        self._dwell = None

    def set_dwell(self, histogram: DwellHistogramLike | None) -> None:
        """C observes the outbound dwell of this call's frames into ``histogram`` (as ``InboundSlot``)."""
        self._dwell = histogram
        self.c.dwell = self._outbound.ffi.NULL if histogram is None else dwell_state(histogram)

    def enable(self) -> None:
        c = self.c
        c.enabled = 1 if c.playout and c.stream and self.wire_id is not None else 0

    def disable(self) -> None:
        self.c.enabled = 0

    @property
    def enabled(self) -> bool:
        return bool(self.c.enabled)

    # --- the link's state of the call (relay/inference_link.py) -------------------------------------

    def adopt_audio_seq(self, last: int | None) -> None:
        """The link call's last in-order AUDIO_OUT seq moves here (the one copy from now on)."""
        c = self.c
        c.has_last_audio, c.last_audio_seq = (0, 0) if last is None else (1, last)

    def audio_in_order(self, seq: int) -> bool:
        """``CallState.audio_in_order`` on the entry's state (the Python path of a mapped call)."""
        c = self.c
        if c.has_last_audio and ((seq - c.last_audio_seq + 0x80000000) & 0xFFFFFFFF) - 0x80000000 <= 0:
            return False
        c.has_last_audio, c.last_audio_seq = 1, seq
        return True

    def take_heard(self) -> bool:
        """True once after C took a datagram of the agent's for this call (the link's liveness sweep)."""
        c = self.c
        if c.heard:
            c.heard = 0
            return True
        return False

    def take_counts(self) -> tuple[int, int, int]:
        """(frames from inference, packets out, payload bytes out) C counted since last asked."""
        c = self.c
        counts = (c.frames_in, c.packets_out, c.bytes_out)
        c.frames_in = c.packets_out = c.bytes_out = 0
        return counts


class NativeOutbound(_BatchPath):
    """The per-batch outbound path of one relay process: the call-id table, the entries, reused buffers.

    ``run`` hands fastpath.c ``sr_batch_out`` a batch read from the inference socket; ``decisions[i]`` then
    says which datagrams C finished (0) and which Python must handle as before (1).
    """

    def __init__(self, batch: int, *, ids: int = OUT_IDS) -> None:
        if not available():
            raise RuntimeError(f"native fast path unavailable: {_native_reason}")
        if ids & (ids - 1) or not 16 <= ids <= 1 << 20:
            raise ValueError(f"ids must be a power of two 16..{1 << 20}, got {ids}")
        if not 1 <= batch <= RECV_BATCH_MAX:
            raise ValueError(f"batch must be 1..{RECV_BATCH_MAX}, got {batch}")
        super().__init__(batch, OUT_SLOT)
        ffi = self.ffi
        self._ids = ffi.new("sr_id[]", ids)
        self.table = ffi.new("sr_out_table *")
        self.table.ids = self._ids
        self.table.capacity = ids
        self.table.protect = _srtp_functions()[0]
        self.table.reserve = pylibsrtp.SRTP_MAX_TRAILER_LEN
        self.entries: list[OutboundEntry | None] = []
        self._free: list[int] = []
        self.out_handles = memoryview(ffi.buffer(self._out_index)).cast("i")
        """The entry handle of each datagram C made."""
        self._out_due = ffi.new("int64_t[]", batch)
        self.out_due = memoryview(ffi.buffer(self._out_due)).cast("q")
        self.batches = 0
        self.finished = 0
        """Datagrams from inference C finished (never seen by Python)."""
        self._paced = ffi.new("sr_out *[]", ids // 2)
        self.table.paced = self._paced
        self.table.paced_capacity = ids // 2
        self.table.pace_due = NO_PACE_DUE
        self.paced = 0
        """Frames C held and sent on their slot (``pace``)."""

    def open_entry(self) -> OutboundEntry:
        handle = self._free.pop() if self._free else len(self.entries)
        entry = OutboundEntry(self, handle)
        if handle == len(self.entries):
            self.entries.append(entry)
        else:
            self.entries[handle] = entry
        return entry

    def close_entry(self, entry: OutboundEntry) -> None:
        """The call is done with C: unmap it, forget its held frames, unbind it, give its handle back."""
        self.unmap(entry)
        self.lib.sr_pace_forget(self.table, entry.c)
        entry.unbind()
        if entry.handle < len(self.entries) and self.entries[entry.handle] is entry:
            self.entries[entry.handle] = None
            self._free.append(entry.handle)

    def map(self, entry: OutboundEntry, wire_id: int, peer: tuple[str, int]) -> bool:
        """AUDIO_OUT for ``wire_id`` from ``peer`` is ``entry``'s (the link's call): False when the table is
        full or the address is not numeric (the call keeps the Python path)."""
        if entry.wire_id is not None and entry.wire_id != wire_id:
            self.unmap(entry)
        try:
            key = flow_key(peer)
        except (OSError, ValueError):
            return False
        c = entry.c
        self.ffi.memmove(c.peer_key, key, len(key))
        c.wire_id = wire_id
        if self.lib.sr_out_set(self.table, wire_id, c) != 0:
            return False
        entry.wire_id = wire_id
        return True

    def unmap(self, entry: OutboundEntry) -> None:
        entry.c.enabled = 0
        if entry.wire_id is not None:
            if self.lib.sr_out_get(self.table, entry.wire_id) == entry.c:
                self.lib.sr_out_drop(self.table, entry.wire_id)
            entry.wire_id = None

    @property
    def mapped(self) -> int:
        return int(self.table.used)

    def run(self, recv: RecvBatch, count: int, now_ns: int, send_ns: int, fd: int) -> tuple[int, int, int]:
        """C over the first ``count`` datagrams of ``recv``: (datagrams made, sent by C, finished). A frame's
        dwell counts from its arrival in ``recv.arrivals`` when ``recv`` is timed, else from ``now_ns``."""
        if count > self.batch:
            raise ValueError(f"batch of {count} > {self.batch}")
        nout = self.lib.sr_batch_out(
            self.table,
            recv._buffers,
            RECV_SLOT,
            recv._names,
            RECV_NAME_SLOT,
            recv._lengths,
            recv._name_lengths,
            count,
            now_ns,
            send_ns,
            recv._arrivals,
            self._decisions,
            self._out,
            OUT_SLOT,
            self._out_lengths,
            self._out_index,
            self._out_due,
            fd,
            self._sent,
        )
        if nout < 0:
            raise ValueError("sr_batch_out refused its arguments")
        finished = int(self._sent[1])
        self.batches += 1
        self.finished += finished
        return nout, int(self._sent[0]), finished

    @property
    def pace_due(self) -> int | None:
        """When ``pace`` next has a held frame to send (the playout clock), or None."""
        due = int(self.table.pace_due)
        return None if due == NO_PACE_DUE else due

    def pace(self, now_ns: int, send_ns: int, fd: int) -> tuple[int, int]:
        """fastpath.c ``sr_pace``: every held frame whose slot is within `lead` of ``now_ns`` leaves (made
        into ``out(k)`` with ``out_handles[k]``, k < made; ``fd`` >= 0: sent from C). (made, sent by C)."""
        nout = self.lib.sr_pace(
            self.table,
            now_ns,
            send_ns,
            self._out,
            OUT_SLOT,
            self._out_lengths,
            self._out_index,
            self._out_due,
            self.batch,
            fd,
            self._sent,
        )
        if nout < 0:
            raise ValueError("sr_pace refused its arguments")
        self.paced += nout
        return nout, int(self._sent[0])

    def take_link_counts(self) -> tuple[int, int]:
        """(datagrams in, late audio) C counted for the link since last asked."""
        t = self.table
        counts = (int(t.datagrams_in), int(t.audio_late))
        t.datagrams_in = t.audio_late = 0
        return counts

    def drain_for(self, recv: RecvBatch) -> Drain:
        """``recv``'s socket (inference's) drained batch after batch through this path (``Drain``)."""
        d = self._drain_state(recv)
        d.out_due = self._out_due
        return Drain(self.lib.sr_drain_out, self.table, d)


def classify(data: bytes) -> int:
    """RFC 7983 demultiplexing: KIND_SRTP, KIND_SRTCP, or KIND_OTHER (STUN, DTLS: aioice's)."""
    if available():
        return int(_native.lib.sr_classify(data, len(data)))
    if not data or not 127 < data[0] < 192:
        return KIND_OTHER
    return KIND_SRTCP if len(data) > 1 and 191 < data[1] < 224 else KIND_SRTP


__all__ = [
    "GATE_PYTHON",
    "GATE_SILENT",
    "GATE_TALKING",
    "HINT_DECODE",
    "HINT_SILENCE",
    "HINT_SPEECH",
    "MALFORMED",
    "NATIVE_ENV",
    "UNDECRYPTABLE",
    "Codec",
    "Drain",
    "InboundSlot",
    "NativeCodec",
    "NativeInbound",
    "NativeOutbound",
    "OutboundEntry",
    "PythonCodec",
    "RecvBatch",
    "available",
    "classify",
    "codec",
    "encode_audio",
    "parse_rtp",
    "speech_hint",
    "status",
]
