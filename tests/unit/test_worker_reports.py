"""Workers' reports to the supervisor (relay/workers.py): what a worker prints after its ready line.

The supervisor passes on a report only about a call that worker holds, forgets the call first (the
beat the notice wakes must not list it), and when a worker's pipe closes with calls still on it, reports
them ended. The worker's side writes without blocking and drops, counted, rather than buffer without
bound. The supervisor's reconcile (a fallback for a lost report) never forgets a call whose attach is
in flight or whose worker did not answer: a beat without the call would close it at the edge. Real pipes
and real child processes; the end to end path is tests/e2e/test_worker_reports.py.
"""

from __future__ import annotations

import asyncio
import json
import os
import sys
from typing import Any

import httpx
import pytest

from splitrelay.contract.control import AttachMode, AttachRequest, SfuAttach
from splitrelay.relay.child import ChildProcess, json_ready
from splitrelay.relay.workers import MAX_EVENT_BUFFER, SupervisorChannel, Worker, WorkerPool

pytestmark = pytest.mark.timeout(60)


def report_lines(*docs: dict[str, Any] | str) -> str:
    return "".join((d if isinstance(d, str) else json.dumps(d)) + "\n" for d in docs)


async def test_the_pool_passes_on_reports_about_that_workers_calls_only() -> None:
    lines = report_lines(
        {"event": "stage", "call_id": "mine", "stage": {"turn": 1, "name": "stt_final", "ms": 12.5}},
        {"event": "call_ended", "call_id": "theirs", "reason": "not this worker's call"},
        {"event": "call_ended", "call_id": "mine", "reason": "inference ended the call: unknown_call"},
        {"event": "stage", "call_id": "mine", "stage": {"turn": 1, "name": "late", "ms": 1}},  # ended
        "not json",
        {"event": "surprise", "call_id": "held"},
    )
    code = (
        "import sys, time\n"
        'print(\'{"event": "ready", "url": "http://127.0.0.1:1"}\', flush=True)\n'
        "sys.stdin.readline()\n"  # the test has registered the calls: now the reports
        f"sys.stdout.write({lines!r}); sys.stdout.flush()\n"
    )
    process = await ChildProcess.start("fake worker", [sys.executable, "-c", code], stdin=True)
    try:
        await process.wait_ready(json_ready("ready"), within=30)
        worker, other = Worker(0, process, url="x"), Worker(1, process, url="y")
        pool = WorkerPool([worker], b"k" * 64)
        ended: list[tuple[str, str]] = []
        stages: list[tuple[str, dict[str, Any]]] = []
        beat_lists: list[list[str]] = []

        def on_ended(call_id: str, reason: str) -> None:
            beat_lists.append(pool.live_call_ids())  # what a beat woken now would list
            ended.append((call_id, reason))

        pool.on_ended = on_ended
        pool.on_stage = lambda call_id, stage: stages.append((call_id, stage))
        for call_id, owner in (("mine", worker), ("held", worker), ("theirs", other)):
            owner.calls.add(call_id)
            pool._owner[call_id] = owner
        assert process.process.stdin is not None
        process.process.stdin.write(b"go\n")
        await asyncio.wait_for(asyncio.gather(*pool._listeners), 10)  # the child exits: EOF

        assert stages == [("mine", {"turn": 1, "name": "stt_final", "ms": 12.5})]
        assert ended == [
            ("mine", "inference ended the call: unknown_call"),
            ("held", "relay worker 0 exited"),  # still on the worker when its pipe closed
        ]
        assert "mine" not in beat_lists[0]
        assert pool.live_call_ids() == ["theirs"]  # another worker's call is not this one's to end
        assert pool.reports_refused == 4  # theirs, the late stage, not json, the unknown event
        await pool._http.aclose()
    finally:
        await process.stop(5.0)


async def test_the_worker_side_writes_lines_and_drops_when_the_reader_stops() -> None:
    read_fd, write_fd = os.pipe()
    try:
        channel = await SupervisorChannel.open(write_fd)
        channel.call_ended("c1", "x" * 1000)
        channel.call_stages("c1", {"type": "agent.stage", "turn": 2, "name": "tts_first_byte", "ms": 80})
        await asyncio.sleep(0.05)
        first, second = os.read(read_fd, 65536).decode().splitlines()
        assert json.loads(first) == {"event": "call_ended", "call_id": "c1", "reason": "x" * 300}
        assert json.loads(second)["stage"] == {"turn": 2, "name": "tts_first_byte", "ms": 80}

        for _ in range(MAX_EVENT_BUFFER // 300 + 400):  # nobody reads: the pipe fills, then the buffer
            channel.call_ended("c2", "y" * 300)
        assert channel.dropped > 0
        await channel.aclose(within=0.2)  # cannot flush to a reader that never reads: bounded anyway
    finally:
        os.close(read_fd)
        os.close(write_fd)


async def test_the_pool_keeps_a_call_still_attaching_and_the_calls_of_a_worker_that_did_not_answer() -> None:
    attach_sent, finish_attach = asyncio.Event(), asyncio.Event()
    answering = {"http://w0": True, "http://w1": True}

    async def handler(request: httpx.Request) -> httpx.Response:
        base = f"{request.url.scheme}://{request.url.host}"
        if request.method == "POST":  # the worker attaches (SFU set-up takes a while)
            attach_sent.set()
            await finish_attach.wait()
            doc = json.loads(request.content)
            answer = {"call_id": doc["call_id"], "mode": "sfu", "setup_ms": 1.0}
            return httpx.Response(201, json=answer | {"sfu_session_id": "r", "sfu_track_name": "voice"})
        if not answering[base]:
            return httpx.Response(503, json={"error": {"code": "busy", "message": "busy"}})
        if request.url.path != "/v1/calls":  # one call: unknown to the worker until attached
            return httpx.Response(404, json={"error": {"code": "not_found", "message": "no such call"}})
        return httpx.Response(200, json={"calls": []})  # a worker lists a call once its attach is done

    idle = [sys.executable, "-c", "import sys; sys.stdin.readline()"]  # alive until its stdin closes
    processes = [await ChildProcess.start(f"idle {i}", idle, stdin=True) for i in range(2)]
    try:
        workers = [Worker(i, p, url=f"http://w{i}") for i, p in enumerate(processes)]
        pool = WorkerPool(workers, b"k" * 64)
        await pool._http.aclose()
        pool._http = httpx.AsyncClient(transport=httpx.MockTransport(handler))
        sfu = SfuAttach(caller_session_id="s", caller_track_name="mic")
        request = AttachRequest(call_id="c-new", mode=AttachMode.SFU, sfu=sfu)
        attach = asyncio.create_task(pool.attach(request))
        await asyncio.wait_for(attach_sent.wait(), 5)
        await pool.list_calls()  # asked mid-attach: the worker does not list it yet
        assert await pool.get_call("c-new") is None  # nor know it
        assert pool.live_call_ids() == ["c-new"]
        finish_attach.set()
        await asyncio.wait_for(attach, 5)
        assert pool.live_call_ids() == ["c-new"]

        owner = pool._owner["c-new"]
        answering[owner.url] = False  # its worker does not answer this time: nothing is concluded
        await pool.list_calls()
        assert await pool.get_call("c-new") is None
        assert pool.live_call_ids() == ["c-new"]
        answering[owner.url] = True  # it answers, without the call: the call ended there
        await pool.list_calls()
        assert pool.live_call_ids() == []
        await pool._http.aclose()
    finally:
        for process in processes:
            await process.stop(5.0)
