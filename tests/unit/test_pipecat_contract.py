"""The contact points between splitrelay.integrations.pipecat and pipecat-ai, checked on the installed one.

pipecat-ai is pinned exactly (pyproject's `pipecat` extra). An upgrade that renames, removes or reshapes
anything the transport subclasses, overrides, calls or constructs fails here, by name, before the
end-to-end tests (tests/integration/test_pipecat_*.py) fail in a less legible way.
"""

from __future__ import annotations

import dataclasses
import importlib.metadata
import importlib.resources
import inspect
import re
import tomllib
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest
from pipecat.audio.vad.silero import SileroVADAnalyzer
from pipecat.frames import frames
from pipecat.observers.base_observer import BaseObserver, FramePushed
from pipecat.pipeline.base_pipeline import BasePipeline
from pipecat.pipeline.pipeline import Pipeline
from pipecat.pipeline.worker import PipelineParams, PipelineWorker
from pipecat.processors.audio.vad_processor import VADProcessor
from pipecat.processors.frame_processor import FrameDirection, FrameProcessor
from pipecat.transports.base_input import BaseInputTransport
from pipecat.transports.base_output import BaseOutputTransport
from pipecat.transports.base_transport import BaseTransport, TransportParams
from pipecat.workers.runner import WorkerRunner

from splitrelay.integrations import pipecat as integration

REPO = Path(__file__).resolve().parents[2]


def names(function: Callable[..., Any]) -> list[str]:
    return [p for p in inspect.signature(function).parameters if p not in ("self", "cls")]


def test_the_installed_pipecat_is_the_pinned_one() -> None:
    with open(REPO / "pyproject.toml", "rb") as file:
        extra = tomllib.load(file)["project"]["optional-dependencies"]["pipecat"]
    (pin,) = [spec for spec in extra if spec.startswith("pipecat-ai")]
    match = re.fullmatch(r"pipecat-ai==(\S+)", pin)
    assert match, f"pipecat-ai must be pinned exactly, got {pin!r}"
    assert importlib.metadata.version("pipecat-ai") == match.group(1)
    lock = (REPO / "requirements.lock").read_text()
    assert f"pipecat-ai=={match.group(1)}\n" in lock
    assert not re.search(r"^torch(audio)?==", lock, re.MULTILINE), "the pipecat extra must not pull torch"


# (class, method, the parameter names the transport relies on, in order)
OVERRIDDEN: list[tuple[type[Any], str, list[str]]] = [
    (BaseTransport, "__init__", ["name", "input_name", "output_name"]),
    (BaseTransport, "input", []),
    (BaseTransport, "output", []),
    (BaseInputTransport, "__init__", ["params", "kwargs"]),
    (BaseInputTransport, "start", ["frame"]),
    (BaseInputTransport, "stop", ["frame"]),
    (BaseInputTransport, "cancel", ["frame"]),
    (BaseInputTransport, "cleanup", []),
    (BaseInputTransport, "set_transport_ready", ["frame"]),
    (BaseInputTransport, "push_audio_frame", ["frame"]),
    (BaseOutputTransport, "__init__", ["params", "kwargs"]),
    (BaseOutputTransport, "start", ["frame"]),
    (BaseOutputTransport, "stop", ["frame"]),
    (BaseOutputTransport, "cancel", ["frame"]),
    (BaseOutputTransport, "cleanup", []),
    (BaseOutputTransport, "set_transport_ready", ["frame"]),
    (BaseOutputTransport, "write_audio_frame", ["frame"]),
    (BaseOutputTransport, "send_message", ["frame"]),
    (BaseOutputTransport, "process_frame", ["frame", "direction"]),
    (FrameProcessor, "push_frame", ["frame", "direction"]),
    (FrameProcessor, "broadcast_interruption", []),
    (FrameProcessor, "broadcast_frame", ["frame_cls", "kwargs"]),
    (FrameProcessor, "create_task", ["coroutine", "name", "context"]),
    (FrameProcessor, "cancel_task", ["task", "timeout"]),
    (FrameProcessor, "_register_event_handler", ["event_name", "sync"]),
    (FrameProcessor, "_call_event_handler", ["event_name", "args", "kwargs"]),
    (BaseTransport, "_register_event_handler", ["event_name", "sync"]),
    (BaseTransport, "_call_event_handler", ["event_name", "args", "kwargs"]),
    (BaseTransport, "event_handler", ["event_name"]),
    (BaseObserver, "__init__", ["observe_every_push", "kwargs"]),
    (BaseObserver, "on_push_frame", ["data"]),
    (PipelineWorker, "add_observer", ["observer"]),
    (WorkerRunner, "add_workers", ["workers"]),
    (WorkerRunner, "run", ["worker", "auto_end"]),
]


@pytest.mark.parametrize(("cls", "method", "expected"), OVERRIDDEN, ids=lambda v: getattr(v, "__name__", v))
def test_each_method_the_transport_relies_on_keeps_its_signature(
    cls: type[Any], method: str, expected: list[str]
) -> None:
    function = getattr(cls, method, None)
    assert function is not None, f"{cls.__qualname__}.{method} is gone"
    assert names(function) == expected, f"{cls.__qualname__}.{method}{inspect.signature(function)}"


def test_the_coroutines_stay_coroutines() -> None:
    for cls, method, _ in OVERRIDDEN:
        sync = ("__init__", "input", "output", "create_task", "event_handler", "_register_event_handler")
        if method in (*sync, "add_observer"):
            continue
        assert inspect.iscoroutinefunction(getattr(cls, method)), f"{cls.__qualname__}.{method} is not async"
    assert isinstance(BaseInputTransport.sample_rate, property)
    assert isinstance(BaseOutputTransport.sample_rate, property)
    assert FrameDirection.DOWNSTREAM != FrameDirection.UPSTREAM


def test_keyword_arguments_the_transport_and_agent_pass() -> None:
    worker = names(PipelineWorker.__init__)
    assert worker[0] == "pipeline" and {"params", "enable_rtvi", "idle_timeout_secs"} <= set(worker)
    assert {"handle_sigint", "handle_sigterm"} <= set(names(WorkerRunner.__init__))
    assert "reason" in names(PipelineWorker.cancel)
    assert {"audio_in_sample_rate", "audio_out_sample_rate"} <= set(PipelineParams.model_fields)
    fields = TransportParams.model_fields
    expected = {"audio_in_enabled", "audio_out_enabled", "audio_in_channels", "audio_out_channels"}
    assert expected <= set(fields)
    assert {"audio_in_sample_rate", "audio_out_sample_rate", "audio_out_end_silence_secs"} <= set(fields)
    assert issubclass(Pipeline, BasePipeline)
    assert "vad_analyzer" in names(VADProcessor.__init__)
    assert "params" in names(SileroVADAnalyzer.__init__)


def init_fields(cls: type[Any]) -> list[str]:
    return [f.name for f in dataclasses.fields(cls) if f.init]


@pytest.mark.parametrize(
    ("frame", "expected"),
    [
        (frames.InputAudioRawFrame, ["audio", "sample_rate", "num_channels"]),
        (frames.OutputAudioRawFrame, ["audio", "sample_rate", "num_channels"]),
        (frames.TTSAudioRawFrame, ["audio", "sample_rate", "num_channels", "context_id"]),
        (frames.InputTransportMessageFrame, ["message"]),
        (frames.OutputTransportMessageFrame, ["message"]),
        (frames.OutputTransportMessageUrgentFrame, ["message"]),
        (frames.InterruptionFrame, []),
        (frames.BotStoppedSpeakingFrame, []),
        (frames.ClientConnectedFrame, []),
        (frames.TranscriptionFrame, ["text", "user_id", "timestamp", "language", "result", "finalized"]),
        (frames.InterimTranscriptionFrame, ["text", "user_id", "timestamp", "language", "result"]),
        (frames.FunctionCallCancelFrame, ["function_name", "tool_call_id", "run_llm"]),
    ],
    ids=lambda v: getattr(v, "__name__", None),
)
def test_frames_keep_their_fields(frame: type[Any], expected: list[str]) -> None:
    assert init_fields(frame) == expected


def test_frames_the_transport_reads() -> None:
    assert issubclass(frames.InputAudioRawFrame, frames.SystemFrame)
    assert issubclass(frames.TTSAudioRawFrame, frames.OutputAudioRawFrame)
    assert issubclass(frames.TTSTextFrame, frames.TextFrame)
    assert {"function_name", "tool_call_id", "arguments"} <= set(
        init_fields(frames.FunctionCallInProgressFrame)
    )
    assert {"function_name", "tool_call_id", "result"} <= set(init_fields(frames.FunctionCallResultFrame))
    assert {"broadcast_sibling_id"} <= {f.name for f in dataclasses.fields(frames.Frame)}
    assert [f.name for f in dataclasses.fields(FramePushed)][:6] == [
        "source",
        "destination",
        "frame",
        "direction",
        "timestamp",
        "first_push",
    ]
    # The transport's own frame still builds on Pipecat's frame base (a dataclass with those fields).
    assert init_fields(integration.RelayBargeInFrame) == [
        "heard_ms",
        "played_samples",
        "dropped_frames",
        "response_seq",
    ]


def test_silero_vad_ships_its_onnx_model_and_runs_on_onnxruntime() -> None:
    model = importlib.resources.files("pipecat.audio.vad") / "data" / "silero_vad.onnx"
    assert model.is_file()
    analyzer = SileroVADAnalyzer()
    analyzer.set_sample_rate(16_000)  # what the pipeline's StartFrame does
    assert analyzer.num_frames_required() == 512
    assert analyzer.voice_confidence(bytes(1024)) < 0.5  # silence, through the real model
