"""An agent that marks stages, as a process of its own, so a test can SIGKILL it by PID.

``python -m tests.e2e.staging_agent [PORT]`` listens on loopback UDP, on PORT (default: a free one; a
restarted agent takes its predecessor's), with the wire key from $SPLITRELAY_WIRE_KEY, and prints one
JSON ready line ``{"event": "ready", "host", "port", "pid"}``. Each call: after 25 caller frames (half a
second), one turn with two stage marks (``stt_final``, then ``llm_first_token`` 50 ms later); then it
keeps the call open (the SDK's keep-alives) until the call ends or the process dies. SIGTERM stops it.
"""

from __future__ import annotations

import asyncio
import json
import os
import signal
import sys

from splitrelay.inference.sdk import InferenceCall, InferenceServer
from splitrelay.inference.stages import StageMarks

MARK_AFTER_FRAMES = 25
MARKS = ("stt_final", "llm_first_token")


async def staging_agent(call: InferenceCall) -> None:
    """One turn of two marks after half a second of the caller; then listen until the call ends."""
    marks = StageMarks(call, reliable=True)
    count = 0
    async for _ in call.frames():  # one frame every 20 ms: ends with the call
        count += 1
        if count == MARK_AFTER_FRAMES:
            marks.turn_started(None)
            for name in MARKS:
                await asyncio.sleep(0.05)
                marks.mark(name)


async def main(port: int) -> None:
    stop = asyncio.Event()
    loop = asyncio.get_running_loop()
    for sig in (signal.SIGINT, signal.SIGTERM):
        loop.add_signal_handler(sig, stop.set)
    async with InferenceServer(staging_agent, "127.0.0.1", port) as server:
        assert server.address is not None
        host, port = server.address[:2]
        print(json.dumps({"event": "ready", "host": host, "port": port, "pid": os.getpid()}), flush=True)
        await stop.wait()


if __name__ == "__main__":
    asyncio.run(main(int(sys.argv[1]) if len(sys.argv) > 1 else 0))
