"""The SDK's PCM path over the real wire: the relay's own link (RelayLink) on one side, an agent that
only speaks PCM on the other. Caller frames with a gap come out as contiguous 16 kHz PCM; the agent's
24 kHz PCM goes back as 20 ms Opus frames, one response marked, and a barge-in tells it what was heard."""

from __future__ import annotations

import asyncio
from collections.abc import Callable

import numpy as np

from splitrelay.inference import wire
from splitrelay.inference.audio import CallerAudioDecoder
from splitrelay.inference.sdk import BargeInNotice, InferenceCall, InferenceServer, PcmChunk, RelayEvent
from splitrelay.relay.inference_link import RelayLink
from tests.opus_fixtures import clip
from tests.recording_sink import RecordingSink

F = 960
TTS_RATE = 24_000


async def test_pcm_in_with_a_gap_and_pcm_out_as_one_marked_response() -> None:
    audio = clip((("tone", 400),))  # 20 frames
    heard: list[PcmChunk] = []
    truncated: list[int] = []
    got_all = asyncio.Event()
    interrupted = asyncio.Event()

    async def agent(call: InferenceCall) -> None:
        async for chunk in call.pcm(16_000):
            heard.append(chunk)
            if len(heard) == len(audio.frames):
                break
        got_all.set()
        output = call.pcm_output(TTS_RATE)
        tone = (np.sin(np.arange(TTS_RATE * 3 // 10) * 2 * np.pi * 300 / TTS_RATE) * 6000).astype(np.int16)
        for start in range(0, len(tone), 480):  # a TTS stream in 20 ms pieces of its own rate
            output.send(tone[start : start + 480].tobytes())
        output.end()
        async for event in call.events():
            if isinstance(event, BargeInNotice):
                truncated.append(output.interrupted(event))
                interrupted.set()
                return

    sink = RecordingSink()
    async with InferenceServer(agent, "127.0.0.1", 0) as server:
        assert server.address is not None
        async with RelayLink(server.address) as link:
            call_id = await link.start_call("pcm-1", sink)
            for i, frame in enumerate(audio.frames):
                if i == 7:
                    continue  # lost on the caller's leg: concealed from frame 8's FEC or by PLC
                flags = wire.audio_in_flags(marker=i == 0, level=audio.levels[i])
                assert link.send_audio_in(call_id, i, i * F, frame, flags)
            async with asyncio.timeout(10):
                await got_all.wait()
                await sink.wait_for(lambda: len(sink.audio) == 15)  # 300 ms in 20 ms frames
            link.send_barge_in(call_id, played_samples=4_800, dropped_frames=10, response_seq=4)
            async with asyncio.timeout(10):
                await interrupted.wait()

    assert [c.seq for c in heard] == list(range(20))
    assert [c.seq for c in heard if c.concealed] == [7]
    assert all(len(c.pcm) == 640 for c in heard)
    assert [o.marker for o in sink.audio] == [True] + [False] * 14
    # What came back is the agent's tone: decode it as the caller's browser would.
    decoder = CallerAudioDecoder(48_000)
    pcm = b"".join(c.pcm for o in sink.audio for c in decoder.push(o.seq, o.payload))
    samples = np.frombuffer(pcm, dtype=np.int16).astype(np.float64)
    spectrum = np.abs(np.fft.rfft(samples[4800:]))
    assert abs(int(np.argmax(spectrum)) * 48_000 / (len(samples) - 4800) - 300) < 10
    assert truncated == [100]  # 4,800 samples at 48 kHz: the caller heard 100 ms of the response


async def test_pcm_output_clear_drops_the_response_at_the_relay_and_starts_a_new_one() -> None:
    done = asyncio.Event()
    first: list[int] = []
    heard: list[int] = []

    async def agent(call: InferenceCall) -> None:
        output = call.pcm_output(TTS_RATE)
        tone = (np.sin(np.arange(TTS_RATE // 5) * 2 * np.pi * 300 / TTS_RATE) * 6000).astype(np.int16)
        first.append(output.send(tone.tobytes()))  # 200 ms (the resampler holds a little back)
        output.send(tone[:100].tobytes())  # a fraction of a frame left unframed
        cleared = output.clear()
        assert cleared is not None and await cleared
        first.append(call.out_timestamp)
        output.send(tone.tobytes())  # the next response: marked again, nothing left from the last
        done.set()
        async for event in call.events():  # the relay answers the CLEAR with what was heard
            if isinstance(event, RelayEvent) and (ms := output.cleared(event)) is not None:
                heard.append(ms)
                return

    sink = RecordingSink()
    async with InferenceServer(agent, "127.0.0.1", 0) as server:
        assert server.address is not None
        async with RelayLink(server.address) as link:
            call_id = await link.start_call("pcm-clear", sink)
            async with asyncio.timeout(10):
                await done.wait()
                await sink.wait_for(lambda: len(sink.clears) == 1 and len(sink.audio) >= 2 * first[0])
            link.send_event(call_id, {"type": "relay.other"})
            link.send_event(call_id, {"type": "relay.cleared", "heard_samples": 10**6, "dropped_frames": 0})
            await asyncio.wait_for(_until(lambda: bool(heard)), 10)
    assert heard == [204]  # capped at what the agent gave (200 ms + 100 samples), not the 20 s claimed
    sent, clear_at = first
    assert sent > 0 and clear_at == sent * F
    assert sink.clears == [clear_at]  # the relay drops every frame of the first response
    markers = [o.timestamp for o in sink.audio if o.marker]
    assert markers == [0, clear_at]  # the frame after the CLEAR starts a new response


async def _until(condition: Callable[[], bool]) -> None:
    for _ in range(500):  # bounded: the caller's wait_for sets the time limit
        if condition():
            return
        await asyncio.sleep(0.01)
