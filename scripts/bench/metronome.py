"""A metronome agent for `bench failover`: one tagged frame every 20 ms for as long as a call lasts.

The echo agent speaks only after the caller does, so a gap in what the caller hears cannot be told from a
pause. This agent never pauses: every 20 ms it sends one frame whose payload carries the wall-clock
tick it was made for (``time.time()`` in 20 ms steps, the same on every agent of the host), which agent
made it, and a stream id for the call leg (relay and wire call). At the caller, a missing tick is audio
lost, a frame of an old stream after the new one began is duplicated audio (both legs playing), and
the time between the last frame before a fault and the first after it is the gap the caller heard.

The payload is not Opus (nothing on the path decodes agent audio: the relay and the SFU forward it
byte for byte); it is 80 bytes like a 32 kbit/s Opus frame. Run it as
``python -m splitrelay.bench.metronome --listen HOST:PORT`` with SPLITRELAY_WIRE_KEY set; it prints the
echo agent's ready line (``listening on udp://HOST:PORT``), so the local stack starts it the same way.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import signal
import struct
import sys
import time
import zlib
from dataclasses import dataclass
from typing import Final

from splitrelay.inference.sdk import InferenceCall, InferenceServer, run
from splitrelay.inference.wire_auth import WireKeyring

FRAME_S: Final = 0.02
FRAME_BYTES: Final = 80
MAGIC: Final = b"MTRN"
_TAG: Final = struct.Struct("!4sBIQ")  # magic, agent id, stream (one per call leg), tick
MAX_CALL_FRAMES: Final = 50 * 3600 * 4  # four hours of frames: the send loop's bound


def tick_now() -> int:
    """The current 20 ms tick of the wall clock (shared by every process of the host)."""
    return int(time.time() / FRAME_S)


def frame(agent_id: int, tick: int, stream: int = 0) -> bytes:
    return _TAG.pack(MAGIC, agent_id, stream & 0xFFFFFFFF, tick).ljust(FRAME_BYTES, b"\0")


@dataclass(frozen=True)
class Tag:
    agent_id: int
    tick: int
    stream: int
    """Which call leg sent it (relay and wire call): a failover starts a new stream."""


def read_tag(payload: bytes) -> Tag | None:
    """The tag of a metronome frame, or None for any other payload."""
    if len(payload) < _TAG.size or not payload.startswith(MAGIC):
        return None
    _, agent_id, stream, tick = _TAG.unpack_from(payload)
    return Tag(agent_id, tick, stream)


class Metronome:
    """The handler: sends the current tick every 20 ms, on the wall clock, until the call ends."""

    def __init__(self, agent_id: int) -> None:
        self.agent_id = agent_id

    async def __call__(self, call: InferenceCall) -> None:
        drain = asyncio.create_task(self._drain(call))
        stream = zlib.crc32(f"{call.relay}/{call.call_id}".encode())
        try:
            last = tick_now() - 1
            first = True
            for _ in range(MAX_CALL_FRAMES):
                if call.ended:
                    return
                tick = tick_now()
                if tick > last:  # a late wake-up sends the current tick, never a burst of old ones
                    call.send_audio(frame(self.agent_id, tick, stream), marker=first)
                    last, first = tick, False
                await asyncio.sleep(max(0.0, (tick + 1) * FRAME_S - time.time()))
        finally:
            drain.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await drain

    @staticmethod
    async def _drain(call: InferenceCall) -> None:
        """Read (and drop) the caller's frames, so they do not pile up in the call's queue."""
        async for _ in call.frames():
            pass


async def serve(host: str, port: int, agent_id: int) -> None:
    stop = asyncio.Event()
    loop = asyncio.get_running_loop()
    for signum in (signal.SIGINT, signal.SIGTERM):
        loop.add_signal_handler(signum, stop.set)
    async with InferenceServer(Metronome(agent_id), host, port, key=WireKeyring.from_env()) as server:
        assert server.address is not None
        shown = f"[{server.address[0]}]" if ":" in server.address[0] else server.address[0]
        print(f"metronome agent {agent_id} listening on udp://{shown}:{server.address[1]}", flush=True)
        await stop.wait()


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(prog="python -m splitrelay.bench.metronome", description=__doc__)
    parser.add_argument("--listen", default="127.0.0.1:0", help="UDP HOST:PORT (port 0 picks one)")
    parser.add_argument("--agent-id", type=int, default=0, help="0..255, carried in every frame")
    args = parser.parse_args(argv)
    host, _, port_text = str(args.listen).rpartition(":")
    if not host or not port_text.isdigit() or not 0 <= int(port_text) <= 65535:
        parser.error(f"--listen: expected HOST:PORT, got {args.listen!r}")
    if not 0 <= args.agent_id <= 255:
        parser.error(f"--agent-id: must be 0..255, got {args.agent_id}")
    try:
        run(serve(host.strip("[]"), int(port_text), args.agent_id))
    except OSError as exc:
        sys.exit(f"--listen: cannot bind {args.listen} ({exc.strerror or exc})")


if __name__ == "__main__":
    main()
