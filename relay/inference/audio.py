"""PCM for agents: the caller's Opus as PCM at the agent's rate, with loss concealment and in-band FEC;
the agent's PCM at any rate as 20 ms Opus frames, streamed as it is produced.

Why opuslib-next (ctypes over the system's libopus, Debian ``libopus0``): PyAV's decoder has no way to ask
libopus for a packet's in-band FEC (``opus_decode(..., decode_fec=1)``), and concealment needs the decoder
called with no packet; opuslib-next exposes both, installs as a pure-Python wheel and is maintained.
Why soxr: a proper band-limited resampler (libsoxr, "HQ"), streaming, for rates libopus does not decode to
natively (22.05 kHz, 44.1 kHz); rates libopus supports (8, 12, 16, 24, 48 kHz) are decoded directly, with
libopus' own resampling. Both come with ``pip install 'splitrelay[audio]'``; this module imports them on
first use so the SDK's base install stays light.
"""

from __future__ import annotations

from collections.abc import Iterator
from dataclasses import dataclass
from typing import Any, Final, Literal

SAMPLE_RATE: Final = 48_000  # Opus on the wire (RFC 7587)
FRAME_MS: Final = 20
OPUS_RATES: Final = (8_000, 12_000, 16_000, 24_000, 48_000)
MAX_CONCEALED: Final = 10
"""Frames at most concealed for one gap (200 ms); a longer gap is a new talk spurt, not a loss to hide."""
SEQ_MOD: Final = 1 << 16
SampleType = Literal["int16", "float32"]


def _codecs() -> tuple[Any, Any, Any]:
    try:
        import numpy
        import opuslib_next
        import soxr
    except (ModuleNotFoundError, Exception) as exc:  # opuslib raises a plain Exception without libopus
        raise ModuleNotFoundError(
            f"PCM audio needs the audio extra and libopus: pip install 'splitrelay[audio]' "
            f"(and apt-get install libopus0): {exc}"
        ) from None
    return numpy, opuslib_next, soxr


@dataclass(frozen=True, slots=True)
class PcmChunk:
    """20 ms of caller audio at the agent's rate: int16 little-endian bytes, or float32 in [-1, 1]."""

    pcm: Any  # bytes (int16) or a numpy float32 array
    rate: int
    seq: int  # the frame's sequence number (concealed frames get the numbers of the ones lost)
    concealed: bool  # made up by the decoder (packet-loss concealment), not heard from the caller
    recovered: bool  # rebuilt from the next packet's in-band FEC


class CallerAudioDecoder:
    """One call's inbound Opus → PCM, in order, with gaps filled.

    A gap of n frames before a packet: the first n-1 are concealed (libopus PLC) and the last is rebuilt
    from this packet's in-band FEC when the caller sent it (Chromium does by default), else concealed too.
    Late and duplicate packets are dropped: the agent's timeline only moves forward.
    """

    def __init__(self, rate: int = 16_000, sample_type: SampleType = "int16", channels: int = 1) -> None:
        if not 8_000 <= rate <= 48_000:
            raise ValueError(f"rate: must be 8000..48000 Hz, got {rate}")
        if sample_type not in ("int16", "float32"):
            raise ValueError(f"sample_type: must be int16 or float32, got {sample_type!r}")
        if channels not in (1, 2):
            raise ValueError(f"channels: must be 1 or 2, got {channels}")
        self._np, opus, soxr = _codecs()
        self.rate = rate
        self.sample_type = sample_type
        self.channels = channels
        self._decode_rate = rate if rate in OPUS_RATES else SAMPLE_RATE
        self._frame = self._decode_rate * FRAME_MS // 1000
        self._decoder = opus.Decoder(self._decode_rate, channels)
        self._resampler = (
            None
            if self._decode_rate == rate
            else soxr.ResampleStream(self._decode_rate, rate, channels, dtype="int16", quality="HQ")
        )
        self._last_seq: int | None = None
        self.concealed = 0
        self.recovered = 0
        self.decode_errors = 0

    def push(self, seq: int, payload: bytes) -> list[PcmChunk]:
        """PCM for this packet and any frames lost just before it (empty for a late or duplicate one)."""
        seq &= SEQ_MOD - 1
        chunks: list[PcmChunk] = []
        if self._last_seq is not None:
            gap = (seq - self._last_seq - 1) % SEQ_MOD
            if gap >= SEQ_MOD // 2:
                return chunks  # behind the newest: late or duplicate
            if 0 < gap <= MAX_CONCEALED:
                for k in range(gap):
                    lost = (self._last_seq + 1 + k) % SEQ_MOD
                    if k == gap - 1 and payload:
                        chunks.append(self._chunk(self._decode(payload, fec=True), lost, True, True))
                    else:
                        chunks.append(self._chunk(self._decode(b"", fec=False), lost, True, False))
        self._last_seq = seq
        chunks.append(self._chunk(self._decode(payload, fec=False), seq, False, False))
        return chunks

    def _decode(self, payload: bytes, *, fec: bool) -> bytes:
        try:
            return bytes(self._decoder.decode(payload, self._frame, decode_fec=fec))
        except Exception:  # an undecodable packet: conceal it rather than lose the timeline
            self.decode_errors += 1
            return bytes(self._decoder.decode(b"", self._frame, decode_fec=False))

    def _chunk(self, pcm: bytes, seq: int, concealed: bool, recovered: bool) -> PcmChunk:
        if concealed:
            self.recovered += recovered
            self.concealed += not recovered
        if self._resampler is not None:
            samples = self._np.frombuffer(pcm, dtype=self._np.int16).reshape(-1, self.channels)
            pcm = self._resampler.resample_chunk(samples).tobytes()
        out: Any = pcm
        if self.sample_type == "float32":
            out = self._np.frombuffer(pcm, dtype=self._np.int16).astype(self._np.float32) / 32768.0
        return PcmChunk(out, self.rate, seq, concealed, recovered)


@dataclass(frozen=True, slots=True)
class EncoderSettings:
    """Outbound Opus: bitrate in bit/s, in-band FEC (with the loss it should expect), DTX."""

    bitrate: int = 32_000
    fec: bool = True
    expected_loss_pct: int = 10
    dtx: bool = False
    complexity: int = 9

    def __post_init__(self) -> None:
        if not 6_000 <= self.bitrate <= 510_000:
            raise ValueError(f"bitrate: must be 6000..510000 bit/s, got {self.bitrate}")
        if not 0 <= self.expected_loss_pct <= 100:
            raise ValueError(f"expected_loss_pct: must be 0..100, got {self.expected_loss_pct}")
        if not 0 <= self.complexity <= 10:
            raise ValueError(f"complexity: must be 0..10, got {self.complexity}")


class AgentAudioEncoder:
    """The agent's PCM (int16, any rate from 8 to 48 kHz, e.g. a TTS stream's 22.05 or 24 kHz) → 20 ms
    Opus frames at 48 kHz, returned as soon as each is complete, so playback starts with the first one.

    One response at a time: :meth:`flush` ends it (the last frame padded with silence), :meth:`clear`
    drops what was not yet framed (a barge-in). It counts the response's input in the agent's own
    milliseconds, so the relay's barge-in position can be told back in those terms (:meth:`heard_ms`).
    """

    def __init__(self, input_rate: int, settings: EncoderSettings | None = None, channels: int = 1) -> None:
        if not 8_000 <= input_rate <= 48_000:
            raise ValueError(f"input_rate: must be 8000..48000 Hz, got {input_rate}")
        if channels not in (1, 2):
            raise ValueError(f"channels: must be 1 or 2, got {channels}")
        np, opus, soxr = _codecs()
        self._np = np
        self._soxr = soxr
        self.input_rate = input_rate
        self.channels = channels
        self.settings = settings or EncoderSettings()
        encoder = opus.Encoder(SAMPLE_RATE, channels, opus.APPLICATION_VOIP)
        encoder.bitrate = self.settings.bitrate
        encoder.inband_fec = int(self.settings.fec)
        encoder.packet_loss_perc = self.settings.expected_loss_pct
        encoder.dtx = int(self.settings.dtx)
        encoder.complexity = self.settings.complexity
        self._encoder = encoder
        self._frame_bytes = SAMPLE_RATE * FRAME_MS // 1000 * 2 * channels
        self._pending = bytearray()
        self._resampler: Any = None
        self._flushed = False
        self.input_samples = 0  # of the current response, at input_rate
        self.frames_out = 0  # of the current response
        self.clear()

    def push(self, pcm: bytes) -> list[bytes]:
        """Opus frames for every full 20 ms now available (possibly none yet)."""
        if len(pcm) % (2 * self.channels):
            raise ValueError(f"pcm: int16 samples of {self.channels} channel(s), got {len(pcm)} bytes")
        if self._flushed:  # the first audio of the next response
            self.clear()
        self.input_samples += len(pcm) // (2 * self.channels)
        if self._resampler is not None:
            samples = self._np.frombuffer(pcm, dtype=self._np.int16).reshape(-1, self.channels)
            pcm = self._resampler.resample_chunk(samples).tobytes()
        self._pending += pcm
        return list(self._frames())

    def flush(self) -> list[bytes]:
        """The rest of the response, the last frame padded with silence; the next push starts a new one."""
        if self._resampler is not None:
            empty = self._np.zeros((0, self.channels), dtype=self._np.int16)
            self._pending += self._resampler.resample_chunk(empty, last=True).tobytes()
        if self._pending:
            self._pending += bytes(-len(self._pending) % self._frame_bytes)
        frames = list(self._frames())
        self._pending.clear()
        self._resampler = self._new_resampler()
        self._flushed = True  # counts stay readable (heard_ms) until the next response's first push
        return frames

    def clear(self) -> None:
        """Forget the response: what was pushed but not yet framed is dropped (after a barge-in)."""
        self._pending.clear()
        self._resampler = self._new_resampler()
        self._flushed = False
        self.input_samples = 0
        self.frames_out = 0

    def heard_ms(self, played_samples: int) -> int:
        """How much of the response the caller heard, in ms of the agent's own audio, from the relay's
        BARGE_IN ``played_samples`` (48 kHz): what an LLM context is truncated to, as OpenAI's Realtime
        API does with ``audio_end_ms``. Never more than the agent gave (the last frame's padding)."""
        given_ms = self.input_samples * 1000 // self.input_rate
        return max(0, min(played_samples * 1000 // SAMPLE_RATE, given_ms))

    def _new_resampler(self) -> Any:
        if self.input_rate == SAMPLE_RATE:
            return None
        return self._soxr.ResampleStream(
            self.input_rate, SAMPLE_RATE, self.channels, dtype="int16", quality="HQ"
        )

    def _frames(self) -> Iterator[bytes]:
        size = self._frame_bytes
        while len(self._pending) >= size:
            frame = bytes(self._pending[:size])
            del self._pending[:size]
            self.frames_out += 1
            yield bytes(self._encoder.encode(frame, size // (2 * self.channels)))
