"""The SDK's default barge-in confirmer: Silero VAD on CPU, from a model an installed package ships.

The relay pauses playout on the first voiced packet and asks inference (BARGE_CANDIDATE) whether the
caller is really speaking; a level detector alone cuts the agent off for a cough, a keyboard or a door.
This confirmer answers from a voice-activity model: Silero VAD's ONNX file, which pipecat-ai ships inside
its wheel (pipecat/audio/vad/data/silero_vad.onnx), run with onnxruntime. Nothing is downloaded at run
time; both come with ``pip install 'splitrelay[pipecat]'``. The model file is found without importing
pipecat (its import is slow and logs), only its package folder is looked up.

It keeps the last few caller frames so the onset that raised the candidate is decoded too, decodes only
while a candidate is open, and decides in 32 ms windows at 16 kHz: confirm after ``confirm_windows``
windows the model calls speech, reject once ``max_windows`` passed without that.
"""

from __future__ import annotations

import importlib.util
from collections import deque
from pathlib import Path
from typing import Any, Final

from splitrelay.inference.audio import CallerAudioDecoder
from splitrelay.inference.wire import u32_diff

VAD_RATE: Final = 16_000
WINDOW: Final = 512  # samples at 16 kHz: the window Silero v5 takes (32 ms)
CONTEXT: Final = 64  # samples of the previous window the model sees before each one
RECENT_FRAMES: Final = 10  # caller frames kept (200 ms): the onset arrives before its candidate
MODEL_PACKAGE: Final = "pipecat"
MODEL_PATH: Final = ("audio", "vad", "data", "silero_vad.onnx")


def silero_model_path() -> Path:
    """Where the installed pipecat-ai keeps Silero's ONNX model; raises naming the extra when absent."""
    spec = importlib.util.find_spec(MODEL_PACKAGE)
    if spec is None or not spec.submodule_search_locations:
        raise ModuleNotFoundError(
            "the VAD confirmer needs the Silero model pipecat-ai ships: pip install 'splitrelay[pipecat]'",
            name=MODEL_PACKAGE,
        )
    path = Path(next(iter(spec.submodule_search_locations))).joinpath(*MODEL_PATH)
    if not path.is_file():
        raise FileNotFoundError(f"Silero VAD model: {path} is missing from the installed pipecat-ai")
    return path


class SileroVad:
    """Silero VAD v5 on onnxruntime, one thread: speech probability of each 512-sample 16 kHz window."""

    def __init__(self, model: Path | None = None) -> None:
        try:
            import numpy
            import onnxruntime  # type: ignore[import-untyped]
        except ModuleNotFoundError as exc:
            raise ModuleNotFoundError(
                f"the VAD confirmer needs {exc.name}: pip install 'splitrelay[pipecat]'", name=exc.name
            ) from None
        self._np = numpy
        opts = onnxruntime.SessionOptions()
        opts.inter_op_num_threads = 1
        opts.intra_op_num_threads = 1
        self._session = onnxruntime.InferenceSession(
            str(model or silero_model_path()), providers=["CPUExecutionProvider"], sess_options=opts
        )
        self._sr = numpy.array(VAD_RATE, dtype="int64")
        self.reset()

    def reset(self) -> None:
        """Forget the stream (a new candidate starts from its onset)."""
        np = self._np
        self._state = np.zeros((2, 1, 128), dtype="float32")
        self._context = np.zeros((1, CONTEXT), dtype="float32")

    def probability(self, window: Any) -> float:
        """Speech probability of one window of float32 samples in [-1, 1]."""
        np = self._np
        if window.shape != (WINDOW,):
            raise ValueError(f"window: must be {WINDOW} float32 samples, got shape {window.shape}")
        x = np.concatenate((self._context, window.reshape(1, WINDOW).astype("float32")), axis=1)
        out, self._state = self._session.run(None, {"input": x, "state": self._state, "sr": self._sr})
        self._context = x[:, -CONTEXT:]
        return float(out.reshape(-1)[0])


class VadConfirmer:
    """A ``BargeConfirmer`` (relay/inference/sdk.py) on Silero VAD; one per call.

    ``on_audio`` sees every caller frame, ``on_candidate`` opens a candidate; each returns True
    (confirm), False (reject) or None (not decided yet).
    """

    def __init__(
        self,
        *,
        threshold: float = 0.5,
        confirm_windows: int = 3,
        max_windows: int = 8,
        vad: SileroVad | None = None,
        channels: int = 1,
    ) -> None:
        if not 0.0 < threshold < 1.0:
            raise ValueError(f"threshold: must be in (0, 1), got {threshold}")
        if not 1 <= confirm_windows <= max_windows <= 60:
            raise ValueError(
                f"confirm_windows, max_windows: need 1 <= confirm_windows <= max_windows <= 60, "
                f"got {confirm_windows}, {max_windows}"
            )
        self.threshold = threshold
        self.confirm_windows = confirm_windows
        self.max_windows = max_windows
        self._vad = vad or SileroVad()
        self._channels = channels
        self._recent: deque[tuple[int, int, bytes]] = deque(maxlen=RECENT_FRAMES)
        self._open = False
        self._decoder: CallerAudioDecoder | None = None
        self._pending: Any = None
        self._windows = 0
        self._speech = 0
        self.windows_run = 0  # model evaluations, for the CPU benchmark

    def on_audio(self, seq: int, timestamp: int, payload: bytes) -> bool | None:
        """One caller frame, in arrival order."""
        self._recent.append((seq, timestamp, payload))
        if not self._open:
            return None
        return self._feed(seq, payload)

    def on_candidate(self, onset_timestamp: int) -> bool | None:
        """A candidate opened at the caller's ``onset_timestamp``: judge from that frame on."""
        self._open = True
        self._decoder = CallerAudioDecoder(VAD_RATE, "float32", self._channels)
        self._pending = None
        self._windows = self._speech = 0
        self._vad.reset()
        verdict = None
        for seq, timestamp, payload in list(self._recent):
            if u32_diff(timestamp, onset_timestamp) >= 0 and verdict is None:
                verdict = self._feed(seq, payload)
        return verdict

    def _feed(self, seq: int, payload: bytes) -> bool | None:
        decoder = self._decoder
        if decoder is None:
            return None
        np = self._vad._np
        for chunk in decoder.push(seq, payload):
            samples = chunk.pcm.reshape(-1, self._channels).mean(axis=1) if self._channels > 1 else chunk.pcm
            self._pending = samples if self._pending is None else np.concatenate((self._pending, samples))
            while self._pending.size >= WINDOW:
                window, self._pending = self._pending[:WINDOW], self._pending[WINDOW:]
                self.windows_run += 1
                self._windows += 1
                if self._vad.probability(window) >= self.threshold:
                    self._speech += 1
                if self._speech >= self.confirm_windows:
                    return self._close(True)
                if self._windows >= self.max_windows:
                    return self._close(False)
        return None

    def _close(self, verdict: bool) -> bool:
        self._open = False
        self._decoder = None
        self._pending = None
        return verdict


class StreamingVad:
    """Per-frame speech decisions from Silero VAD over a call's whole inbound stream (turn-taking).

    Every frame is decoded (16 kHz) and each 32 ms window run through the model; a frame counts as speech
    when the latest window's probability is at least ``threshold``. Used by the echo agent to end a turn
    on voice activity plus a silence, where a level threshold alone counts any loud noise as speech.
    """

    def __init__(self, *, threshold: float = 0.5, channels: int = 1, vad: SileroVad | None = None) -> None:
        if not 0.0 < threshold < 1.0:
            raise ValueError(f"vad_threshold: must be in (0, 1), got {threshold}")
        self.threshold = threshold
        self._vad = vad or SileroVad()
        self._channels = channels
        self._decoder = CallerAudioDecoder(VAD_RATE, "float32", channels)
        self._pending: Any = None
        self.speaking = False
        self.windows_run = 0

    def is_speech(self, seq: int, payload: bytes) -> bool:
        """Feed one caller frame (arrival order); True while the latest window was speech."""
        np = self._vad._np
        for chunk in self._decoder.push(seq, payload):
            samples = chunk.pcm.reshape(-1, self._channels).mean(axis=1) if self._channels > 1 else chunk.pcm
            self._pending = samples if self._pending is None else np.concatenate((self._pending, samples))
            while self._pending.size >= WINDOW:
                window, self._pending = self._pending[:WINDOW], self._pending[WINDOW:]
                self.windows_run += 1
                self.speaking = self._vad.probability(window) >= self.threshold
        return self.speaking
