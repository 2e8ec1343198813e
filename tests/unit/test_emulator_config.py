"""Emulator configuration and the forwarding arithmetic, without sockets."""

from __future__ import annotations

import json
import time
from pathlib import Path
from types import SimpleNamespace
from typing import cast

import pytest

from splitrelay.contract.safety import Secret
from splitrelay.emulator import forwarding
from splitrelay.emulator.config import ConfigError, EmulatorConfig, Timers, load_config, mask
from splitrelay.emulator.forwarding import (
    DWELL_SAMPLES,
    DwellRecorder,
    Forwarder,
    Inbound,
    Publication,
    Subscription,
)
from splitrelay.relay.media.rtp import RtpPacket
from splitrelay.relay.media.srtp_fastpath import OutboundStream


def test_toml_config_loads_and_never_shows_secrets(tmp_path: Path) -> None:
    path = tmp_path / "emulator.toml"
    path.write_text(
        'port = 0\n[apps]\n"my-app" = "top-secret-value"\n[turn_keys]\nk1 = "turn-token"\n'
        "[timers]\ntrack_idle_timeout = 0.5\n"
    )
    config = load_config(path)
    assert config.apps["my-app"].reveal() == "top-secret-value"
    assert config.timers.track_idle_timeout == 0.5 and config.timers.reconnect_window == 30.0
    described = json.dumps(config.describe())
    assert "top-secret-value" not in described and "turn-token" not in described
    assert mask(Secret("abcdef")) == "<redacted, 6 chars>"
    assert "top-secret-value" not in repr(config)


@pytest.mark.parametrize(
    ("doc", "message"),
    [
        ({}, "apps: configure at least one"),
        ({"apps": {"a": ""}}, "apps.a: must not be empty"),
        ({"apps": {"a/b": "s"}}, "apps id"),
        ({"apps": {"a": "s"}, "port": 70000}, "port: must be between 0 and 65535"),
        ({"apps": {"a": "s"}, "timers": {"connect_wait": 0}}, "timers.connect_wait: must be between"),
        ({"apps": {"a": "s"}, "timers": {"nap": 1}}, "timers.nap: unknown setting"),
        (
            {"apps": {"a": "s"}, "limits": {"max_published_per_session": 99}},
            "limits.max_published_per_session",
        ),
        ({"apps": {"a": "s"}, "candidate_addresses": ["localhost"]}, "not an IPv4/IPv6 address literal"),
        ({"apps": {"a": "s"}, "colour": "blue"}, "colour: unknown setting"),
    ],
)
def test_bad_config_names_the_field(tmp_path: Path, doc: dict[str, object], message: str) -> None:
    path = tmp_path / "emulator.json"
    path.write_text(json.dumps(doc))
    with pytest.raises(ConfigError, match=message.replace("[", r"\[").replace(".", r"\.")):
        load_config(path)


def test_unreadable_or_unknown_config_files(tmp_path: Path) -> None:
    with pytest.raises(ConfigError, match="cannot read"):
        load_config(tmp_path / "missing.toml")
    (tmp_path / "c.yaml").write_text("apps: {}")
    with pytest.raises(ConfigError, match=r"\.toml or \.json"):
        load_config(tmp_path / "c.yaml")
    (tmp_path / "c.toml").write_text("apps = [")
    with pytest.raises(ConfigError, match="not valid TOML"):
        load_config(tmp_path / "c.toml")


def test_watchdog_interval_follows_the_shortest_timer() -> None:
    assert Timers().watchdog_interval == 1.0
    assert Timers(track_idle_timeout=0.2).watchdog_interval == pytest.approx(0.05)
    assert (
        Timers(track_idle_timeout=0.01, reconnect_window=0.01, unconnected_session_ttl=0.01).watchdog_interval
        == 0.01
    )
    with pytest.raises(ConfigError):
        EmulatorConfig(apps={})


class FakeStream:
    """Stands in for OutboundStream: records what a subscription sends."""

    clock_rate = 48_000

    def __init__(self, sequence: int) -> None:
        self.sequence = sequence
        self.sent: list[tuple[bytes, int, int, int | None]] = []
        self.packets = 0
        self.last_timestamp = 0
        self.last_send_ns = 0

    def send(
        self,
        payload: bytes,
        timestamp: int,
        *,
        marker: bool = False,
        sequence: int | None = None,
        audio_level: int | None = None,
        voice: bool = False,
    ) -> bool:
        assert sequence is not None
        self.sent.append((payload, timestamp, sequence, audio_level))
        self.sequence = (sequence + 1) & 0xFFFF
        self.packets += 1
        self.last_timestamp = timestamp
        self.last_send_ns = NOW_NS[0]
        return True


NOW_NS = [10**12]
"""The forwarding module's clock in these tests (perf_counter_ns), moved by hand."""


@pytest.fixture(autouse=True)
def fixed_clock(monkeypatch: pytest.MonkeyPatch) -> None:
    NOW_NS[0] = 10**12
    clock = SimpleNamespace(perf_counter_ns=lambda: NOW_NS[0], monotonic=time.monotonic)
    monkeypatch.setattr(forwarding, "time", clock)


def packet(seq: int, ts: int, ssrc: int = 7, level: int | None = None) -> RtpPacket:
    return RtpPacket(111, False, seq & 0xFFFF, ts & 0xFFFFFFFF, ssrc, bytes([seq & 0xFF]), level, False, 0, 0)


def test_subscription_keeps_gaps_and_timestamps_then_continues_across_a_switch() -> None:
    first = Publication("pub", "mic", "0", 0.0)
    second = Publication("pub2", "mic", "0", 0.0)
    stream = FakeStream(sequence=65534)
    subscription = Subscription("sub", "1", first)
    subscription.stream = cast(OutboundStream, stream)
    for seq, ts in ((100, 1000), (101, 1960), (103, 3880)):  # 102 lost before the SFU
        assert subscription.forward(packet(seq, ts, level=5))
    assert [(s, t, lvl) for _, t, s, lvl in stream.sent] == [(65534, 1000, 5), (65535, 1960, 5), (1, 3880, 5)]
    subscription.switch_to(second)
    NOW_NS[0] += 4_000_000  # 4 ms later: less than a frame, still one frame on
    assert subscription.forward(packet(9000, 777_777))
    assert stream.sent[-1][1:3] == (3880 + 960, 2)
    assert subscription.forward(packet(9001, 777_777 + 960))
    assert stream.sent[-1][1:3] == (3880 + 1920, 3)


@pytest.mark.parametrize(("gap_ms", "frames"), [(0, 1), (29, 1), (31, 2), (1_000, 50), (65_000, 3250)])
def test_a_switch_moves_the_clock_on_by_the_wall_clock_gap(gap_ms: int, frames: int) -> None:
    """Failover: the old source stopped ``gap_ms`` before the new one's first packet; the subscriber's
    timestamps advance by that gap in whole 20 ms frames, its sequence by one, then follow the source."""
    stream = FakeStream(sequence=500)
    subscription = Subscription("sub", "1", Publication("relay-1", "voice", "0", 0.0))
    subscription.stream = cast(OutboundStream, stream)
    assert subscription.forward(packet(40, 0xFFFF_FF00))  # the stream's first source: unchanged
    assert stream.sent[-1][1:3] == (0xFFFF_FF00, 500)
    subscription.switch_to(Publication("relay-2", "voice", "0", 0.0))
    NOW_NS[0] += gap_ms * 1_000_000
    assert subscription.forward(packet(7, 123))
    assert subscription.forward(packet(9, 123 + 1920))  # one lost at the new source: the gap shows
    expected = (0xFFFF_FF00 + 960 * frames) & 0xFFFFFFFF
    assert [s[1:3] for s in stream.sent[1:]] == [(expected, 501), ((expected + 1920) & 0xFFFFFFFF, 503)]


def test_a_new_subscription_on_a_played_stream_goes_on_too() -> None:
    """The old source's session ended first (its subscription dropped); the next source gets a new
    Subscription on the same outbound stream, which continues the stream rather than restarting it."""
    stream = FakeStream(sequence=65535)
    first = Subscription("sub", "1", Publication("relay-1", "voice", "0", 0.0))
    first.stream = cast(OutboundStream, stream)
    assert first.forward(packet(1, 5000))
    first.stream = None
    second = Subscription("sub", "1", Publication("relay-2", "voice", "0", 0.0))
    second.stream = cast(OutboundStream, stream)
    NOW_NS[0] += 200_000_000
    assert second.forward(packet(30_000, 42))
    assert stream.sent[-1][1:3] == (5000 + 10 * 960, 0)


def test_inbound_routes_by_ssrc_and_learns_a_missing_one() -> None:
    forwarder = Forwarder()
    inbound = Inbound(forwarder, clock=lambda: 42.0)
    publication = Publication("pub", "mic", "0", 0.0)
    subscription = Subscription("sub", "0", publication)
    stream = FakeStream(sequence=10)
    subscription.stream = cast(OutboundStream, stream)
    publication.subscriptions.append(subscription)
    inbound.set_publications([publication])  # no SSRC in the SDP: the first one seen is learned
    inbound.on_packet(packet(1, 0, ssrc=99))
    inbound.on_packet(packet(2, 960, ssrc=99))
    assert publication.ssrcs == (99,) and publication.last_media == 42.0
    other = Publication("pub", "other", "1", 0.0)
    other.ssrcs = (5,)
    inbound.set_publications([publication, other])
    inbound.on_packet(packet(3, 1920, ssrc=1234))  # neither: unrouted
    stats = forwarder.stats()
    assert (stats.packets_in, stats.packets_forwarded, stats.packets_unrouted) == (3, 2, 1)
    assert stats.dwell_samples == 2 and stats.dwell_p50_ms is not None


def test_dwell_recorder_keeps_the_latest_samples() -> None:
    recorder = DwellRecorder()
    assert recorder.percentiles(0.5) == (None,)
    for value in range(DWELL_SAMPLES + 10):
        recorder.record(1_000_000 if value < 10 else 2_000_000)
    assert recorder.percentiles(0.0, 0.99) == (2.0, 2.0)
