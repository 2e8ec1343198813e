"""The wire key, sealing, the replay window, the CALL_START guard (relay/inference/wire_auth.py)."""

from __future__ import annotations

import base64
import pickle

import pytest

from splitrelay.inference import wire
from splitrelay.inference.wire import FLAG_RELIABLE, Message, MsgType
from splitrelay.inference.wire_auth import (
    CallStartGuard,
    ReplayWindow,
    Sealer,
    WireKey,
    WireKeyError,
    WireKeyring,
    generate_text,
)

SECRET = bytes(range(32))


def test_a_key_parses_from_hex_and_base64url_and_both_give_the_same_key_id() -> None:
    from_hex = WireKey.parse(SECRET.hex())
    from_b64 = WireKey.parse(base64.urlsafe_b64encode(SECRET).decode().rstrip("="))
    assert from_hex.key_id == from_b64.key_id == WireKey(SECRET).key_id
    assert from_hex.mac_key("relay") == from_b64.mac_key("relay") != from_hex.mac_key("inference")
    assert len(base64.urlsafe_b64decode(generate_text() + "=")) == 32


@pytest.mark.parametrize(
    ("text", "pattern"),
    [
        ("ab" * 31, r"SPLITRELAY_WIRE_KEY: must be hex or base64url of 32..256 bytes, got 31 bytes"),
        ("not a key!", r"SPLITRELAY_WIRE_KEY: must be hex or base64url of 32..256 bytes \(characters"),
        (
            "AAAAA",
            r"SPLITRELAY_WIRE_KEY: must be hex or base64url of 32..256 bytes; it is not valid base64url",
        ),
        ("x" * 400, r"SPLITRELAY_WIRE_KEY: must be hex or base64url of 32..256 bytes, got 300 bytes"),
    ],
)
def test_a_bad_key_names_the_variable_and_the_limit_and_not_the_value(text: str, pattern: str) -> None:
    with pytest.raises(WireKeyError, match=pattern) as caught:
        WireKey.parse(text)
    assert text not in str(caught.value)


def test_the_secret_never_shows_in_repr_str_or_pickle() -> None:
    key = WireKey(SECRET)
    ring = WireKeyring(key, WireKey(b"p" * 32))
    for shown in (repr(key), str(key), repr(ring), f"{key}", f"{ring!r}"):
        assert SECRET.hex() not in shown and repr(SECRET) not in shown and "secret=<hidden>" in repr(key)
    with pytest.raises(TypeError, match="not picklable"):
        pickle.dumps(key)
    with pytest.raises(TypeError, match="not picklable"):
        pickle.dumps(ring)


def test_the_keyring_comes_from_the_environment() -> None:
    new, old = WireKey(b"n" * 32), WireKey(b"o" * 32)
    ring = WireKeyring.from_env(
        {"SPLITRELAY_WIRE_KEY": (b"n" * 32).hex(), "SPLITRELAY_WIRE_KEY_PREVIOUS": (b"o" * 32).hex()}
    )
    assert (
        ring.current.key_id == new.key_id and ring.previous is not None and ring.previous.key_id == old.key_id
    )
    with pytest.raises(WireKeyError, match=r"SPLITRELAY_WIRE_KEY: not set"):
        WireKeyring.from_env({})
    with pytest.raises(WireKeyError, match=r"SPLITRELAY_WIRE_KEY_PREVIOUS: must be hex or base64url"):
        WireKeyring.from_env({"SPLITRELAY_WIRE_KEY": (b"n" * 32).hex(), "SPLITRELAY_WIRE_KEY_PREVIOUS": "?"})


def test_two_keys_with_the_same_key_id_are_refused() -> None:
    first = WireKey(SECRET)
    for i in range(10_000):  # bounded: a clash among 256 ids turns up within a few hundred draws
        other = WireKey(i.to_bytes(32, "big"))
        if other.key_id == first.key_id and other.mac_key("relay") != first.mac_key("relay"):
            break
    else:
        pytest.fail("no key id clash found in 10,000 keys")
    with pytest.raises(WireKeyError, match=r"SPLITRELAY_WIRE_KEY_PREVIOUS: has the same key id"):
        WireKeyring(first, other)


def test_rotation_accepts_the_previous_key_and_replies_with_the_key_a_call_started_with() -> None:
    old, new = WireKey(b"o" * 32), WireKey(b"n" * 32)
    body = wire.encode(Message(MsgType.CLEAR, 5, 1, 0, FLAG_RELIABLE))
    relay_old = Sealer(WireKeyring(old), "relay")
    inference = Sealer(WireKeyring(new, old), "inference")
    opened = inference.open(relay_old.seal(body))
    assert opened == (body, old.key_id)
    assert relay_old.open(inference.seal(body, old.key_id)) is not None  # replies in the call's key
    assert relay_old.open(inference.seal(body)) is None  # the new key: unknown to this relay
    assert Sealer(WireKeyring(new), "inference").open(relay_old.seal(body)) is None  # rotation over


def test_replay_window_accepts_each_seq_once_and_nothing_too_old() -> None:
    window = ReplayWindow(size=4)
    assert [window.accept(s) for s in (10, 12, 11, 12, 10)] == [True, True, True, False, False]
    assert window.accept(9) is True  # 12 - 9 = 3 < 4
    assert window.accept(8) is False  # too old
    assert window.accept(20) is True and window.accept(16) is False and window.accept(17) is True
    wrap = ReplayWindow()
    assert wrap.accept(2**32 - 1) and wrap.accept(0) and not wrap.accept(2**32 - 1) and wrap.accept(2**32 - 2)


def test_call_start_guard_refuses_stale_and_replayed_call_starts_and_forgets_with_time() -> None:
    now = [1_000_000.0]
    guard = CallStartGuard(30.0, clock=lambda: now[0])
    sent = int(now[0] * 1000)
    assert guard.admit(1, sent) is None
    assert guard.admit(1, sent) == "replayed"
    assert guard.admit(2, sent - 31_000) == "stale"
    assert guard.admit(3, sent + 31_000) == "stale"  # from the future: a clock far off, or forged
    now[0] += 61
    assert guard.admit(1, sent) == "stale"  # forgotten, but by now stale: a replay still fails
    assert guard.admit(1, int(now[0] * 1000)) is None
