"""`relay serve --impair` (issue 15): the relay's own media leg impaired in userspace, both ways.

A direct-mode local stack whose relay impairs its leg with 15% loss: a real WebRTC call of one turn
through it loses packets both ways (the caller counts what it missed from the relay, the relay what it
missed from the caller), the echo still matches with gaps, and a clean relay in the same test loses
nothing. `splitrelay dev --impair-relay` refuses a bad spec naming the flag.
"""

from __future__ import annotations

import subprocess
import sys

import pytest

from splitrelay.devtools.dev import call_stack
from splitrelay.devtools.stack import Stack, StackConfig
from splitrelay.devtools.utterance import load_utterance
from splitrelay.relay.call import CallConfig, impaired
from splitrelay.relay.media.impair import parse_impairment


def test_impaired_sets_both_directions_only_when_active() -> None:
    clean = CallConfig()
    assert impaired(clean, None) is clean and impaired(clean, parse_impairment("loss=0%")) is clean
    lossy = impaired(clean, parse_impairment("loss=3%,jitter=20ms"))
    assert lossy.fast_path.impair_in == lossy.fast_path.impair_out == parse_impairment("loss=3%,jitter=20ms")
    assert lossy.barge_in_packets == clean.barge_in_packets


async def one_call(relay_impair: str | None) -> tuple[dict[str, object], int | None, bool]:
    stack = Stack(StackConfig(mode="direct", relay_impair=relay_impair))
    info = await stack.start()
    try:
        report = await call_stack(info, load_utterance(), turns=1)
    finally:
        await stack.stop()
    assert report.relay is not None
    return report.caller, report.relay.lost_in, report.turns[0].reply_match is not None


@pytest.mark.asyncio
async def test_the_relays_leg_loses_packets_both_ways_and_a_clean_one_does_not() -> None:
    caller, relay_lost_in, matched = await one_call("loss=15%,seed=11")
    print(f"impaired: caller lost_in {caller['lost_in']}, relay lost_in {relay_lost_in}")
    assert matched  # the echo came back in order, with gaps
    assert isinstance(caller["lost_in"], int) and caller["lost_in"] >= 5  # relay → caller
    assert relay_lost_in is not None and relay_lost_in >= 5  # caller → relay
    caller, relay_lost_in, matched = await one_call(None)
    assert matched and caller["lost_in"] == 0 and relay_lost_in == 0


def test_dev_refuses_a_bad_relay_impairment_by_flag() -> None:
    done = subprocess.run(
        [sys.executable, "-m", "splitrelay.cli", "dev", "--impair-relay", "loss=90%"],
        capture_output=True, text=True, timeout=60, env={"COLUMNS": "200", "PATH": "/usr/bin:/bin"},
    )  # fmt: skip
    assert done.returncode == 2 and "--impair-relay" in done.stderr and "loss" in done.stderr
