"""Load-generator worker of `splitrelay bench relay`: N callers (relay mode) or N bare UDP flows (baseline).

Relay mode: each caller is a real aiortc VoicePeer attached through the relay's signed control API,
then driven over the SRTP fast path with real Opus frames at 50 packets/s, sends staggered across the
20 ms tick. Every echo that comes back is matched to the frame it answers (by payload: the frames are
all distinct), giving loss and the end-to-end round trip caller → relay → inference → relay → caller.

Baseline mode: each flow sends a datagram the size of the callers' SRTP packet to a bare UDP echo and,
when it comes back, one the size of the wire protocol's AUDIO_OUT: the echo then moves as many
datagrams of the same sizes as the relay does, and the round trip crosses it twice, as it crosses the
relay twice.

A child process of the benchmark; JSON lines both ways. stdout: ``progress`` (relay mode), ``ready``,
``result``; stdin: ``{"cmd": "run", ...}`` then ``{"cmd": "stop"}`` (or EOF). The signing key comes from
$SPLITRELAY_RELAY_SIGNING_KEY, never from the command line.
"""

from __future__ import annotations

import argparse
import array
import asyncio
import contextlib
import gc
import json
import math
import os
import struct
import sys
import time
from collections import deque
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np

from relay import wire
from relay.media.rtp import RtpPacket

SIGNING_KEY_ENV = "SPLITRELAY_RELAY_SIGNING_KEY"
FRAME_S = 0.02
SLOTS = 20  # sends are staggered over 20 slots of 1 ms per 20 ms tick
FRAMES = 50  # distinct Opus frames (one second of audio) cycled by every caller
NOISE_DBFS = -50.0  # room noise: real-size Opus frames, below the relay's barge-in threshold (-40 dBov)
MAX_PENDING = 500  # echoes awaited per caller (10 s): older ones count as lost
MATCH_SEARCH = 60  # how far into the pending queue an echo is looked for
DRAIN_S = 2.0  # after the last send, echoes still count for this long
SETUP_TIMEOUT_S = 30.0
CLOSE_CONCURRENCY = 50
_FLOW_HEADER = struct.Struct("!BI")  # baseline datagram: leg (1 = caller-sized, 2 = wire-sized), seq


def emit(event: dict[str, Any]) -> None:
    print(json.dumps(event), flush=True)


# --- the audio ----------------------------------------------------------------------------------------


def noise_frames(count: int = FRAMES, level_dbfs: float = NOISE_DBFS) -> list[tuple[bytes, int]]:
    """``count`` distinct 20 ms Opus frames of white noise at ``level_dbfs`` RMS, with their RFC 6464 level.

    Noise rather than a tone: it codes to full-size frames (about 80 bytes at 32 kbps), as speech does,
    while its level says "not speech", so the relay forwards it without triggering barge-in.
    """
    import av

    samples = 960
    rng = np.random.default_rng(20261101)
    noise = rng.normal(0.0, 32768 * 10 ** (level_dbfs / 20), samples * count).clip(-32768, 32767)
    pcm16 = noise.astype(np.int16)
    encoder: Any = av.CodecContext.create("libopus", "w")
    encoder.sample_rate = 48_000
    encoder.layout = "mono"
    encoder.format = "s16"
    encoder.bit_rate = 32_000
    encoder.options = {"application": "voip"}
    encoder.open()
    payloads: list[bytes] = []
    for i in range(count + 4):  # a few extra frames flush the encoder's look-ahead
        chunk = pcm16[(i % count) * samples : (i % count + 1) * samples]
        frame = av.AudioFrame.from_ndarray(chunk[None, :], format="s16", layout="mono")
        frame.sample_rate = 48_000
        frame.pts = i * samples
        payloads.extend(bytes(p) for p in encoder.encode(frame))
    payloads = payloads[:count]
    if len(payloads) < count or len(set(payloads)) < count:
        raise RuntimeError(f"libopus gave {len(set(payloads))} distinct frames, {count} are needed")
    out = []
    for i, payload in enumerate(payloads):
        pcm = pcm16[i * samples : (i + 1) * samples].astype(np.float64) / 32768.0
        dbov = 10 * math.log10(max(float(np.mean(pcm * pcm)), 1e-13))
        out.append((payload, min(127, max(0, round(-dbov)))))
    return out


# --- the schedule -------------------------------------------------------------------------------------


class Flow:
    """One call or flow as the schedule drives it: sender-side counts here, receiver-side in subclasses."""

    sent = 0
    sent_window = 0
    send_failures = 0

    def send(self, k: int, in_window: bool) -> None:
        raise NotImplementedError

    def received(self) -> tuple[int, int]:
        """(echoes of window packets received, echoes that matched no packet)."""
        raise NotImplementedError

    def stop_counting(self) -> None:
        """The drain is over: later echoes no longer count."""
        raise NotImplementedError


class EchoMatcher:
    """Pairs each echo with the frame it answers, by payload and in send order; counts what never came back.

    Echoes come back in order, one per frame (the relay forwards, the inference echoes), so the echo of a
    frame settles every older frame still pending: those were lost. Payloads repeat every FRAMES frames,
    so an echo is looked for among the first MATCH_SEARCH pending frames only.
    """

    __slots__ = ("_pending", "_rtts", "counting", "lost", "received_window", "unmatched")

    def __init__(self, rtts: array.array[int]) -> None:
        self._pending: deque[tuple[int, int, bool]] = deque()  # (frame index, send ns, in window)
        self._rtts = rtts
        self.counting = True
        self.lost = 0
        self.received_window = 0
        self.unmatched = 0

    def sent(self, index: int, sent_ns: int, in_window: bool) -> None:
        pending = self._pending
        pending.append((index, sent_ns, in_window))
        if len(pending) > MAX_PENDING:
            pending.popleft()
            self.lost += 1

    def echo(self, index: int | None, arrival_ns: int) -> None:
        """One echo of frame ``index`` (None: a payload we never sent)."""
        if index is None:
            self.unmatched += 1
            return
        if not self.counting:
            return
        pending = self._pending
        for position, entry in enumerate(pending):
            if entry[0] == index:
                break
            if position >= MATCH_SEARCH:
                self.unmatched += 1
                return
        else:
            self.unmatched += 1
            return
        for _ in range(position):  # older frames never came back
            pending.popleft()
            self.lost += 1
        _, sent_ns, in_window = pending.popleft()
        if in_window:
            self.received_window += 1
            self._rtts.append(arrival_ns - sent_ns)


@dataclass
class RunResult:
    sent: int
    expected: int
    sent_window: int
    received_window: int
    unmatched: int
    send_failures: int
    lateness_p99_ms: float
    lateness_max_ms: float
    extra: dict[str, Any]

    def event(self) -> dict[str, Any]:
        return {"event": "result", **self.__dict__}


async def drive(flows: Sequence[Flow], t0: float, warmup: float, duration: float) -> tuple[int, list[float]]:
    """Send frame k of flow i at t0 + k * 20 ms + (slot of i) ms until t0 + warmup + duration.

    Time is counted in whole 1 ms slots, so which packets fall in the window is exact, not subject to
    float rounding. Absolute schedule: a late slot sends at once (a catch-up burst) rather than
    skipping, so the count sent is exact and lateness is measured.
    Returns (frames expected, lateness per slot in seconds).
    """
    groups: list[list[Flow]] = [[] for _ in range(SLOTS)]
    for i, flow in enumerate(flows):
        groups[i * SLOTS // len(flows)].append(flow)
    busy = [(s, g) for s, g in enumerate(groups) if g]
    slot_s = FRAME_S / SLOTS
    window_slot = round(warmup / slot_s)
    end_slot = round((warmup + duration) / slot_s)
    lateness: list[float] = []
    expected = 0
    for k in range(math.ceil(end_slot / SLOTS)):  # bounded: one pass per 20 ms tick
        for slot, group in busy:
            index = k * SLOTS + slot
            if index >= end_slot:
                break
            due = t0 + index * slot_s
            delay = due - time.monotonic()
            if delay > 0:
                await asyncio.sleep(delay)
            lateness.append(max(0.0, time.monotonic() - due))
            in_window = index >= window_slot
            for flow in group:
                flow.send(k, in_window)
            expected += len(group)
    return expected, lateness


def summarize(
    flows: Sequence[Flow], expected: int, lateness: list[float], extra: dict[str, Any]
) -> RunResult:
    late = np.array(lateness or [0.0])
    return RunResult(
        sent=sum(f.sent for f in flows),
        expected=expected,
        sent_window=sum(f.sent_window for f in flows),
        received_window=sum(f.received()[0] for f in flows),
        unmatched=sum(f.received()[1] for f in flows),
        send_failures=sum(f.send_failures for f in flows),
        lateness_p99_ms=round(float(np.percentile(late, 99)) * 1000, 3),
        lateness_max_ms=round(float(late.max()) * 1000, 3),
        extra=extra,
    )


# --- relay mode: WebRTC callers -----------------------------------------------------------------------


class Caller(Flow):
    """A caller's peer and fast path, its pending echoes and its share of the round-trip samples."""

    def __init__(
        self, frames: list[tuple[bytes, int]], index_of: dict[bytes, int], rtts: array.array[int]
    ) -> None:
        from relay.media.peer import LOOPBACK, VoicePeer, VoicePeerConfig
        from relay.media.srtp_fastpath import SrtpFastPath

        self.peer = VoicePeer(VoicePeerConfig(candidates=LOOPBACK))
        self.fast_path: SrtpFastPath | None = None
        self._frames = frames
        self._index_of = index_of
        self.matcher = EchoMatcher(rtts)
        self._ts = 0

    async def attach(self, http: Any, key: bytes, call_id: str, within: float) -> None:
        from edge.signing import sign_headers
        from relay.media.srtp_fastpath import FastPathConfig, SrtpFastPath

        offer = await self.peer.create_offer()
        body = json.dumps({"call_id": call_id, "mode": "direct", "offer": {"type": "offer", "sdp": offer}})
        content = body.encode()
        headers = {"content-type": "application/json", **sign_headers(key, "POST", "/v1/calls", content)}
        response = await http.post("/v1/calls", content=content, headers=headers)
        if response.status_code != 201:
            raise RuntimeError(f"attach {call_id}: HTTP {response.status_code}: {response.text[:300]}")
        await self.peer.accept_answer(response.json()["answer"]["sdp"])
        await self.peer.wait_connected(within=within)
        self.fast_path = SrtpFastPath.attach(self.peer.pc, self._on_packet, FastPathConfig())

    def frame(self, k: int) -> tuple[bytes, int]:
        return self._frames[k % FRAMES]

    def send(self, k: int, in_window: bool) -> None:
        index = k % FRAMES
        payload, level = self._frames[index]
        fp = self.fast_path
        assert fp is not None
        now = time.perf_counter_ns()
        if not fp.send(payload, self._ts, audio_level=level, voice=False):
            self.send_failures += 1
            return
        self._ts = (self._ts + 960) & 0xFFFFFFFF
        self.sent += 1
        if in_window:
            self.sent_window += 1
        self.matcher.sent(index, now, in_window)

    def _on_packet(self, pkt: RtpPacket) -> None:
        self.matcher.echo(self._index_of.get(pkt.payload), pkt.arrival_ns)

    def received(self) -> tuple[int, int]:
        return self.matcher.received_window, self.matcher.unmatched

    def stop_counting(self) -> None:
        self.matcher.counting = False

    async def close(self) -> None:
        if self.fast_path is not None:
            await self.fast_path.close()
        await self.peer.close()


async def setup_callers(
    relay_url: str, key: bytes, calls: int, prefix: str, concurrency: int, setup_timeout: float
) -> tuple[list[Caller], list[tuple[bytes, int]], array.array[int]]:
    """Attach ``calls`` callers with at most ``concurrency`` set-ups in flight; all or nothing."""
    import httpx

    frames = noise_frames()
    index_of = {payload: i for i, (payload, _) in enumerate(frames)}
    rtts: array.array[int] = array.array("q")
    callers = [Caller(frames, index_of, rtts) for _ in range(calls)]
    gate = asyncio.Semaphore(concurrency)
    attached = 0
    limits = httpx.Limits(max_connections=concurrency, max_keepalive_connections=concurrency)

    async with httpx.AsyncClient(base_url=relay_url, timeout=setup_timeout, limits=limits) as http:

        async def one(i: int) -> None:
            nonlocal attached
            async with gate:
                try:
                    async with asyncio.timeout(setup_timeout):
                        await callers[i].attach(http, key, f"{prefix}-{i}", setup_timeout)
                except TimeoutError:
                    raise RuntimeError(
                        f"call {prefix}-{i}: not connected within {setup_timeout:g} s"
                    ) from None
            attached += 1
            emit({"event": "progress", "attached": attached})

        try:
            async with asyncio.TaskGroup() as group:
                for i in range(calls):
                    group.create_task(one(i))
        except Exception as exc:
            await close_all(callers)
            failures = exc.exceptions if isinstance(exc, ExceptionGroup) else (exc,)
            first = failures[0]
            raise RuntimeError(
                f"{len(failures)} of {calls} call set-ups failed (after {attached} attached); "
                f"first: {type(first).__name__}: {first}"
            ) from None
        except BaseException:
            await close_all(callers)
            raise
    return callers, frames, rtts


async def close_all(callers: Sequence[Caller]) -> None:
    """Close every caller, a bounded number at a time, within a bounded time."""
    for start in range(0, len(callers), CLOSE_CONCURRENCY):
        batch = callers[start : start + CLOSE_CONCURRENCY]
        with contextlib.suppress(TimeoutError):
            async with asyncio.timeout(10):
                await asyncio.gather(*(c.close() for c in batch), return_exceptions=True)


def srtp_overhead(caller: Caller) -> int:
    """Bytes the SRTP datagram adds to the Opus payload, measured on one real send (for the baseline)."""
    fp = caller.fast_path
    assert fp is not None
    real = fp.transport
    sizes: list[int] = []

    class Probe:
        def sendto(self, data: bytes, addr: Any = None) -> None:
            sizes.append(len(data))
            real.sendto(data, addr)

        def is_closing(self) -> bool:
            return bool(real.is_closing())

    payload = caller.frame(0)[0]
    fp.transport = Probe()  # type: ignore[assignment]
    try:
        caller.send(0, False)
    finally:
        fp.transport = real
        caller.sent = 0  # the probe is not part of the schedule
    if not sizes:
        raise RuntimeError("SRTP probe: the first send did not reach the socket")
    return sizes[0] - len(payload)


# --- baseline mode: bare UDP flows --------------------------------------------------------------------


class UdpFlow(Flow, asyncio.DatagramProtocol):
    """Caller-sized datagram out; on its echo, a wire-sized one; on that echo, the round trip is done."""

    def __init__(self, leg1: list[bytes], leg2: list[bytes], rtts: array.array[int]) -> None:
        self._leg1 = leg1
        self._leg2 = leg2
        self._rtts = rtts
        self._sent_ns = [0] * MAX_PENDING
        self._window = [False] * MAX_PENDING
        self._seq_sent = -1
        self.transport: asyncio.DatagramTransport | None = None
        self.counting = True
        self.received_window = 0
        self.unmatched = 0

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        self.transport = transport  # type: ignore[assignment]

    def error_received(self, exc: Exception) -> None:
        self.send_failures += 1

    def send(self, k: int, in_window: bool) -> None:
        transport = self.transport
        assert transport is not None
        slot = k % MAX_PENDING
        self._sent_ns[slot] = time.perf_counter_ns()
        self._window[slot] = in_window
        self._seq_sent = k
        transport.sendto(_FLOW_HEADER.pack(1, k) + self._leg1[k % FRAMES])
        self.sent += 1
        if in_window:
            self.sent_window += 1

    def datagram_received(self, data: bytes, addr: Any) -> None:
        now = time.perf_counter_ns()
        try:
            leg, k = _FLOW_HEADER.unpack_from(data)
        except struct.error:
            self.unmatched += 1
            return
        if not 0 <= self._seq_sent - k < MAX_PENDING:
            self.unmatched += 1
            return
        if leg == 1:
            self.transport.sendto(_FLOW_HEADER.pack(2, k) + self._leg2[k % FRAMES])  # type: ignore[union-attr]
        elif leg == 2 and self.counting:
            slot = k % MAX_PENDING
            if self._window[slot]:
                self._window[slot] = False  # a duplicate must not count twice
                self.received_window += 1
                self._rtts.append(now - self._sent_ns[slot])
        else:
            self.unmatched += leg != 2

    def received(self) -> tuple[int, int]:
        return self.received_window, self.unmatched

    def stop_counting(self) -> None:
        self.counting = False


async def setup_flows(
    target: tuple[str, int], flows: int, srtp_bytes: int
) -> tuple[list[UdpFlow], array.array[int], list[asyncio.DatagramTransport]]:
    frames = noise_frames()
    pad1 = max(0, srtp_bytes - _FLOW_HEADER.size)
    pad2 = max(0, wire.HEADER_SIZE - _FLOW_HEADER.size)
    leg1 = [payload + bytes(pad1) for payload, _ in frames]
    leg2 = [payload + bytes(pad2) for payload, _ in frames]
    rtts: array.array[int] = array.array("q")
    loop = asyncio.get_running_loop()
    out: list[UdpFlow] = []
    transports: list[asyncio.DatagramTransport] = []
    try:
        for _ in range(flows):  # one socket per flow, as the relay has one per call
            flow = UdpFlow(leg1, leg2, rtts)
            transport, _ = await loop.create_datagram_endpoint(lambda f=flow: f, remote_addr=target)  # type: ignore[misc]
            transports.append(transport)
            out.append(flow)
    except BaseException:
        for t in transports:
            t.close()
        raise
    return out, rtts, transports


# --- the worker ---------------------------------------------------------------------------------------


class GcClock:
    """Time spent in the cyclic garbage collector, per generation (a hidden cost with many live peers)."""

    def __init__(self) -> None:
        self.seconds = [0.0, 0.0, 0.0]
        self.collections = [0, 0, 0]
        self._started = 0.0

    def __call__(self, phase: str, info: dict[str, int]) -> None:
        if phase == "start":
            self._started = time.perf_counter()
        else:
            generation = info["generation"]
            self.seconds[generation] += time.perf_counter() - self._started
            self.collections[generation] += 1

    def report(self) -> dict[str, Any]:
        return {"gc_seconds": [round(s, 4) for s in self.seconds], "gc_collections": self.collections}


async def read_command(reader: asyncio.StreamReader, within: float) -> dict[str, Any]:
    line = await asyncio.wait_for(reader.readline(), within)
    if not line:
        return {"cmd": "stop"}
    command = json.loads(line)
    if not isinstance(command, dict):
        raise ValueError(f"command: expected a JSON object, got {line[:80]!r}")
    return command


async def worker(args: argparse.Namespace) -> int:
    loop = asyncio.get_running_loop()
    reader = asyncio.StreamReader()
    await loop.connect_read_pipe(lambda: asyncio.StreamReaderProtocol(reader), sys.stdin)
    callers: list[Caller] = []
    transports: list[asyncio.DatagramTransport] = []
    try:
        flows: Sequence[Flow]
        extra: dict[str, Any] = {}
        if args.mode == "relay":
            key = os.environ.get(SIGNING_KEY_ENV, "").encode()
            if not key:
                raise ValueError(f"${SIGNING_KEY_ENV} is not set: the worker signs its attach requests")
            callers, frames, rtts = await setup_callers(
                args.relay_url, key, args.count, args.prefix, args.concurrency, args.setup_timeout
            )
            flows = callers
            extra["srtp_overhead"] = srtp_overhead(callers[0])
            extra["payload_bytes_mean"] = round(sum(len(p) for p, _ in frames) / len(frames), 1)
        else:
            host, _, port = args.target.rpartition(":")
            udp_flows, rtts, transports = await setup_flows((host, int(port)), args.count, args.srtp_bytes)
            flows = udp_flows
        # Everything built so far (peers, sockets, frames) lives for the whole run: move it out of the
        # collector's reach, so full collections stop walking hundreds of peers' object graphs.
        gc.collect()
        gc.freeze()
        gc_clock = GcClock()
        gc.callbacks.append(gc_clock)
        emit({"event": "ready", "flows": len(flows)})
        command = await read_command(reader, within=3600)
        if command.get("cmd") != "run":
            return 0
        t0, warmup, duration = float(command["t0"]), float(command["warmup"]), float(command["duration"])
        expected, lateness = await drive(flows, t0, warmup, duration)
        await asyncio.sleep(DRAIN_S)
        for flow in flows:
            flow.stop_counting()
        extra.update(gc_clock.report())
        if callers:
            extra["lost_tracked"] = sum(c.matcher.lost for c in callers)
            extra["fast_path_undecryptable"] = sum(c.fast_path.undecryptable for c in callers if c.fast_path)
        samples = np.frombuffer(rtts, dtype=np.int64).astype(np.float64) / 1000.0  # µs
        np.save(command["rtt_path"], samples.astype(np.float32))
        emit(summarize(flows, expected, lateness, extra).event())
        await read_command(reader, within=600)  # "stop" or EOF
        return 0
    except Exception as exc:
        emit({"event": "error", "message": f"{type(exc).__name__}: {exc}"})
        return 1
    finally:
        await close_all(callers)
        for transport in transports:
            transport.close()


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(prog="python -m scripts.bench_load", description=__doc__)
    parser.add_argument("--mode", choices=("relay", "udp"), required=True)
    parser.add_argument("--count", type=int, required=True, help="callers or flows")
    parser.add_argument("--relay-url", help="relay control API (relay mode)")
    parser.add_argument("--prefix", default="bench", help="call id prefix (relay mode)")
    parser.add_argument("--concurrency", type=int, default=16, help="set-ups in flight (relay mode)")
    parser.add_argument("--setup-timeout", type=float, default=SETUP_TIMEOUT_S)
    parser.add_argument("--target", help="HOST:PORT of the UDP echo (udp mode)")
    parser.add_argument("--srtp-bytes", type=int, default=0, help="SRTP overhead to mimic (udp mode)")
    args = parser.parse_args(argv)
    if not 1 <= args.count <= 10_000:
        parser.error(f"--count: must be 1..10000, got {args.count}")
    if args.mode == "relay" and not args.relay_url:
        parser.error("--relay-url is required in relay mode")
    if args.mode == "udp" and not args.target:
        parser.error("--target is required in udp mode")
    from relay.inference import run

    sys.exit(run(worker(args)))


if __name__ == "__main__":
    main()
