"""An agent lost mid-call (issue 15): a relay with several inference endpoints moves the call to the next
one, whose CALL_START carries ``continues`` (agent_lost, attempt n); with one endpoint it ends the call with
a reason the edge hears as agent_lost. Real `splitrelay agent echo` processes (SIGKILLed), a real relay
(RelayServer) and a real WebRTC caller on loopback.
"""

from __future__ import annotations

import asyncio
import os
import signal
import socket
import time
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from pathlib import Path
from typing import Any

import httpx
import pytest

from splitrelay.contract.control import EndCode
from splitrelay.devtools.stack import agent_ready
from splitrelay.inference.echo_agent import CONTINUED_EVENT
from splitrelay.relay.call import CallConfig
from splitrelay.relay.child import ChildProcess, cli_command
from splitrelay.relay.edge_link import end_code
from splitrelay.relay.inference_link import LinkError
from splitrelay.relay.media.peer import LOOPBACK
from splitrelay.relay.media.srtp_fastpath import FastPathConfig
from splitrelay.relay.server import RelayServer, RelaySettings
from tests.integration.relay_harness import SIGNING_KEY, Caller, SignedApi
from tests.opus_fixtures import clip

pytestmark = pytest.mark.timeout(180)

RELAY_ID = "relay-under-test"
BOUND_S = 3.0  # generous; the measured figures are printed
UTTERANCE = (("silence", 100), ("tone", 400), ("silence", 700))


@asynccontextmanager
async def echo_agents(count: int, run_dir: Path) -> AsyncIterator[list[tuple[ChildProcess, tuple[str, int]]]]:
    """``count`` real echo agents on free loopback ports; stopped by PID at exit."""
    agents: list[tuple[ChildProcess, tuple[str, int]]] = []
    try:
        for index in range(count):
            process = await ChildProcess.start(
                f"agent-{index}",
                cli_command("agent", "echo", "--listen", "127.0.0.1:0", "--silence-ms", "300"),
                env=dict(os.environ),
                stderr=run_dir / f"agent-{index}.log",
            )
            agents.append((process, (process.name, 0)))
            ready = await process.wait_ready(agent_ready, within=30)
            agents[-1] = (process, (str(ready["host"]), int(ready["port"])))
        yield agents
    finally:
        for process, _ in agents:
            await process.stop(5.0)


@asynccontextmanager
async def relay(endpoints: list[tuple[str, int]]) -> AsyncIterator[tuple[SignedApi, RelayServer, list[Any]]]:
    settings = RelaySettings(
        signing_keys={"default": SIGNING_KEY},
        inference=endpoints[0],
        inference_more=tuple(endpoints[1:]),
        relay_id=RELAY_ID,
        host="127.0.0.1",
        port=0,
        candidates=LOOPBACK,
        call=CallConfig(fast_path=FastPathConfig(rtcp_interval=0.2)),
    )
    ended: list[Any] = []
    async with RelayServer(settings) as server, httpx.AsyncClient(base_url=server.url, timeout=10) as http:
        assert server.manager is not None
        server.manager.on_ended = lambda call_id, reason: ended.append((call_id, reason, time.perf_counter()))
        yield SignedApi(http), server, ended


async def turn(caller: Caller) -> int:
    """One utterance; returns how many packets of the echo came back (waits for some, bounded)."""
    before = len(caller.received)
    audio = clip(UTTERANCE)
    await caller.speak(audio.frames, audio.levels)
    await caller.wait_received(before + 10, within=10)
    return len(caller.received) - before


async def record(api: SignedApi, call_id: str) -> dict[str, Any]:
    response = await api.request("GET", f"/v1/calls/{call_id}")
    assert response.status_code == 200, response.text
    info: dict[str, Any] = response.json()
    return info


async def test_a_sigkilled_agent_hands_the_call_to_the_next_endpoint_with_continues(tmp_path: Path) -> None:
    async with echo_agents(2, tmp_path) as agents, relay([a for _, a in agents]) as (api, _, ended):
        caller = Caller()
        try:
            await caller.attach(api, "call-moves")
            assert await turn(caller) > 0  # the first agent echoes
            info = await record(api, "call-moves")
            assert info["inference"] == "{}:{}".format(*agents[0][1]) and info["agent_switches"] == 0
            killed_at = time.perf_counter()
            os.kill(agents[0][0].pid, signal.SIGKILL)
            moved_after = None
            for _ in range(int(BOUND_S / 0.02)):  # bounded: BOUND_S
                info = await record(api, "call-moves")
                if info["agent_switches"] == 1:
                    moved_after = time.perf_counter() - killed_at
                    break
                await asyncio.sleep(0.02)
            assert moved_after is not None, info
            print(f"agent SIGKILL -> call on the next endpoint {moved_after:.3f} s later")
            assert info["state"] == "live" and info["inference"] == "{}:{}".format(*agents[1][1])
            assert await turn(caller) > 0  # the second agent echoes: the call goes on
            info = await record(api, "call-moves")
            continued = [e["event"] for e in info["events"] if e["event"]["type"] == CONTINUED_EVENT]
            assert continued == [
                {"type": CONTINUED_EVENT, "previous_relay": RELAY_ID, "reason": "agent_lost", "attempt": 1}
            ]
            assert ended == []  # the edge was told nothing: the call never ended
            log = (tmp_path / "agent-1.log").read_text()
            assert "continues (agent_lost, attempt 1, previous relay relay-under-test)" in log
        finally:
            await caller.close()


async def test_with_one_endpoint_a_lost_agent_ends_the_call_as_agent_lost(tmp_path: Path) -> None:
    async with echo_agents(1, tmp_path) as agents, relay([agents[0][1]]) as (api, _, ended):
        caller = Caller()
        try:
            await caller.attach(api, "call-ends")
            assert await turn(caller) > 0
            killed_at = time.perf_counter()
            os.kill(agents[0][0].pid, signal.SIGKILL)
            for _ in range(int(BOUND_S / 0.02)):  # bounded: BOUND_S
                if ended:
                    break
                await asyncio.sleep(0.02)
            assert ended, "the call did not end"
            call_id, reason, at = ended[0]
            print(f"agent SIGKILL, one endpoint -> call ended {at - killed_at:.3f} s later: {reason}")
            assert call_id == "call-ends" and at - killed_at < BOUND_S
            assert end_code(reason) is EndCode.AGENT_LOST  # what the edge is told (relay/edge_link.py)
            assert (await api.request("GET", "/v1/calls/call-ends")).status_code == 404
        finally:
            await caller.close()


def _dead_udp_port() -> tuple[str, int]:
    """A loopback UDP port nothing listens on (bound, then closed)."""
    with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as sock:
        sock.bind(("127.0.0.1", 0))
        return ("127.0.0.1", int(sock.getsockname()[1]))


async def test_a_first_endpoint_that_does_not_answer_is_skipped_at_setup(tmp_path: Path) -> None:
    """CALL_START unanswered (nothing on the port): the call starts on the next endpoint, with no
    ``continues`` (no agent had its conversation)."""
    async with echo_agents(1, tmp_path) as agents, relay([_dead_udp_port(), agents[0][1]]) as (api, _, ended):
        caller = Caller()
        try:
            await caller.attach(api, "call-skips")
            assert await turn(caller) > 0
            info = await record(api, "call-skips")
            assert info["inference"] == "{}:{}".format(*agents[0][1]) and info["agent_switches"] == 0
            assert not [e for e in info["events"] if e["event"]["type"] == CONTINUED_EVENT]
            assert ended == []
        finally:
            await caller.close()


async def test_when_every_other_endpoint_is_gone_the_call_ends_as_agent_lost(tmp_path: Path) -> None:
    async with (
        echo_agents(1, tmp_path) as agents,
        relay([agents[0][1], _dead_udp_port()]) as (api, _, ended),
    ):
        caller = Caller()
        try:
            await caller.attach(api, "call-nowhere")
            assert await turn(caller) > 0
            killed_at = time.perf_counter()
            os.kill(agents[0][0].pid, signal.SIGKILL)
            for _ in range(int((BOUND_S + 3) / 0.05)):  # bounded: the retry's CALL_START waits ~1.55 s
                if ended:
                    break
                await asyncio.sleep(0.05)
            assert ended, "the call did not end"
            _, reason, at = ended[0]
            print(f"agent SIGKILL, other endpoint dead -> call ended {at - killed_at:.3f} s later: {reason}")
            assert end_code(reason) is EndCode.AGENT_LOST
        finally:
            await caller.close()


async def test_a_hang_up_while_the_call_moves_ends_it_once(tmp_path: Path) -> None:
    """The caller hangs up while the relay waits for the next agent's ACK (a dead one here): the move is
    called off and the call is closed once."""
    async with (
        echo_agents(1, tmp_path) as agents,
        relay([agents[0][1], _dead_udp_port()]) as (api, server, ended),
    ):
        caller = Caller()
        try:
            await caller.attach(api, "call-hangs-up")
            assert await turn(caller) > 0
            os.kill(agents[0][0].pid, signal.SIGKILL)
            assert server.manager is not None
            call = server.manager.calls["call-hangs-up"]
            for _ in range(int(BOUND_S / 0.02)):  # bounded: until the move starts
                if call._switch_task is not None:
                    break
                await asyncio.sleep(0.02)
            assert call._switch_task is not None
            response = await api.request("DELETE", "/v1/calls/call-hangs-up")
            assert response.status_code == 200, response.text
            await asyncio.sleep(1.5)  # past the move's 1 s wait: nothing more happens to the call
            assert len(ended) == 1 and ended[0][0] == "call-hangs-up", ended  # closed once
            assert call.agent_switches == 0 and call._switch_task is None
            assert server.link.active_calls == 0
        finally:
            await caller.close()


async def test_endpoints_of_another_address_family_stop_the_start_and_release_the_socket() -> None:
    settings = RelaySettings(
        signing_keys={"default": SIGNING_KEY},
        inference=("127.0.0.1", 7000),
        inference_more=(("::1", 7000),),
        host="127.0.0.1",
        port=0,
        candidates=LOOPBACK,
    )
    server = RelayServer(settings)
    with pytest.raises(LinkError, match=r"inference ::1:7000: not of the first endpoint's address family"):
        await server.start()
    assert server.link.batch is None  # the link's socket is closed again
