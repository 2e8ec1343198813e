"""Emulator configuration and the forwarding arithmetic, without sockets."""

from __future__ import annotations

import json
from pathlib import Path
from typing import cast

import pytest

from splitrelay.contract.safety import Secret
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

    def __init__(self, sequence: int) -> None:
        self.sequence = sequence
        self.sent: list[tuple[bytes, int, int, int | None]] = []

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
        return True


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
    assert subscription.forward(packet(9000, 777_777))
    assert stream.sent[-1][1:3] == (3880 + 960, 2)
    assert subscription.forward(packet(9001, 777_777 + 960))
    assert stream.sent[-1][1:3] == (3880 + 1920, 3)


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
