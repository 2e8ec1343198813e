"""CALL_START's optional ``continues`` and ``keepalive_ms``, and KEEPALIVE (issue 15): additive to wire v2.

Old agents must ignore the new keys and never see a KEEPALIVE they did not ask for: the first is checked
against the codec as it was before them (the commit before issue 15's wire changes, from git), the second
by the SDK/link tests (tests/integration/test_agent_liveness.py).
"""

from __future__ import annotations

import importlib.util
import json
import shutil
import subprocess
import sys
from pathlib import Path
from types import ModuleType

import pytest

from splitrelay.contract.control import AttachRequest
from splitrelay.inference import wire
from splitrelay.inference.wire import FLAG_RELIABLE, CallStart, Continuation, Message, MsgType, WireError
from splitrelay.relay.manager import wire_continuation

CALL_ID = 0x1122334455667788
BEFORE = "792efa9"  # main before CALL_START had continues / keepalive_ms and before KEEPALIVE
ROOT = Path(__file__).resolve().parents[2]


def _call_start(**kw: object) -> CallStart:
    return CallStart(call="edge-call-1", sent_at_ms=1_733_400_000_123, **kw)  # type: ignore[arg-type]


def test_continues_and_keepalive_round_trip() -> None:
    start = _call_start(continues=Continuation("relay-0", "agent_lost", 2), keepalive_ms=200)
    msg = wire.decode(wire.encode(Message(MsgType.CALL_START, CALL_ID, 0, 0, FLAG_RELIABLE, start.pack())))
    assert msg.call_start() == start
    body = json.loads(msg.payload)
    assert body["continues"] == {"previous_relay": "relay-0", "reason": "agent_lost", "attempt": 2}
    assert body["keepalive_ms"] == 200


def test_without_the_new_fields_the_payload_is_as_before() -> None:
    """A relay that sets neither sends the very bytes it sent before: no key appears as null."""
    body = json.loads(_call_start().pack())
    assert set(body) == {"call", "codec", "sample_rate", "channels", "ptime_ms", "sent_at_ms", "metadata"}


@pytest.mark.parametrize(
    ("continues", "pattern"),
    [
        ("relay-0", r"call_start\.continues: must be a JSON object"),
        ({"reason": "drain", "attempt": 1}, r"call_start\.continues\.previous_relay"),
        ({"previous_relay": "", "reason": "drain", "attempt": 1}, r"continues\.previous_relay"),
        ({"previous_relay": "r", "reason": "boredom", "attempt": 1}, r"call_start\.continues\.reason"),
        ({"previous_relay": "r", "reason": "drain", "attempt": 0}, r"call_start\.continues\.attempt"),
        ({"previous_relay": "r", "reason": "drain", "attempt": 17}, r"call_start\.continues\.attempt"),
        ({"previous_relay": "r", "reason": "drain", "attempt": True}, r"call_start\.continues\.attempt"),
    ],
)
def test_a_bad_continuation_is_refused_by_field(continues: object, pattern: str) -> None:
    obj = _call_start().to_json() | {"continues": continues}
    with pytest.raises(WireError, match=pattern):
        CallStart.from_json(obj)


@pytest.mark.parametrize("value", [0, 19, 10_001, 200.0, "200", True])
def test_a_bad_keepalive_interval_is_refused_by_field(value: object) -> None:
    with pytest.raises(WireError, match=r"call_start\.keepalive_ms"):
        CallStart.from_json(_call_start().to_json() | {"keepalive_ms": value})


def test_keepalive_is_empty_sealed_control_and_never_reliable() -> None:
    msg = Message(MsgType.KEEPALIVE, CALL_ID, 7, 960)
    assert wire.decode(wire.encode(msg)) == msg
    header = wire.HEADER.pack(wire.VERSION, MsgType.KEEPALIVE, 0, CALL_ID, 7, 0)
    with pytest.raises(WireError, match="KEEPALIVE carries no payload"):
        wire.decode(header + b"x")
    reliable = wire.HEADER.pack(wire.VERSION, MsgType.KEEPALIVE, FLAG_RELIABLE, CALL_ID, 7, 0)
    with pytest.raises(WireError, match="not allowed on KEEPALIVE"):
        wire.decode(reliable)
    with pytest.raises(WireError):
        wire.pack_ack(MsgType.KEEPALIVE)  # nothing to acknowledge


def test_the_edge_continuation_becomes_the_wire_one() -> None:
    request = AttachRequest.from_json(
        {
            "call_id": "c-1",
            "mode": "sfu",
            "sfu": {"caller_session_id": "s" * 32, "caller_track_name": "mic"},
            "continues": {"previous_relay": "relay-1", "reason": "relay_lost", "attempt": 3},
        }
    )
    assert wire_continuation(request.continues) == Continuation("relay-1", "relay_lost", 3)
    assert wire_continuation(None) is None


def _old_wire() -> ModuleType:
    """relay/inference/wire.py as it was before issue 15's additions, loaded from git."""
    git = shutil.which("git")
    if git is None or not (ROOT / ".git").exists():
        pytest.skip("needs the git history of the checkout")
    try:
        source = subprocess.run(
            [git, "-C", str(ROOT), "show", f"{BEFORE}:relay/inference/wire.py"],
            check=True,
            capture_output=True,
            timeout=30,
        ).stdout
    except subprocess.CalledProcessError:
        pytest.skip(f"commit {BEFORE} is not in this clone (shallow?)")
    spec = importlib.util.spec_from_loader("old_wire_before_issue15", loader=None)
    assert spec is not None
    module = importlib.util.module_from_spec(spec)
    sys.modules[spec.name] = module  # dataclasses look the module up while the class is built
    try:
        exec(compile(source, "old_wire.py", "exec"), module.__dict__)
    finally:
        del sys.modules[spec.name]
    return module


def test_an_old_agent_decodes_the_new_call_start_and_ignores_the_new_keys() -> None:
    old = _old_wire()
    start = _call_start(
        channels=2, metadata={"lang": "en"}, continues=Continuation("relay-0", "drain", 1), keepalive_ms=200
    )
    body = wire.encode(Message(MsgType.CALL_START, CALL_ID, 0, 0, FLAG_RELIABLE, start.pack()))
    seen = old.decode(body).call_start()
    assert (seen.call, seen.channels, seen.metadata, seen.sent_at_ms) == (
        "edge-call-1",
        2,
        {"lang": "en"},
        start.sent_at_ms,
    )
    # ...and why a KEEPALIVE goes only to an agent that asked: the old codec refuses the type.
    with pytest.raises(old.WireError, match="unknown message type 12"):
        old.decode(wire.encode(Message(MsgType.KEEPALIVE, CALL_ID, 1)))
