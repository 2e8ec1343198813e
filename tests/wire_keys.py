"""The wire key of the test run (tests/conftest.py put it in the environment) and helpers to forge with."""

from __future__ import annotations

from splitrelay.inference import wire
from splitrelay.inference.wire import Message, MsgType
from splitrelay.inference.wire_auth import Sealer, WireKeyring

KEY = WireKeyring.from_env().current
"""The key both ends use unless a test passes another: the environment's, so a RelayServer agrees."""

AS_RELAY = Sealer(WireKeyring(KEY), "relay")
"""Seals as the relay does; also opens what inference sends."""
AS_INFERENCE = Sealer(WireKeyring(KEY), "inference")
"""Seals as inference does; also opens what the relay sends."""


def peek(data: bytes) -> Message:
    """Decode a datagram as an observer on the path would: the tag stripped, not checked."""
    if data[1] in (MsgType.AUDIO_IN, MsgType.AUDIO_OUT):
        return wire.decode(data)
    return wire.decode(data[: -wire.AUTH_TRAILER])
