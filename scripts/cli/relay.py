"""`splitrelay relay`: run the regional relay (control API + SRTP fast path + link to inference).

Secrets come from the environment (or files), never from flags: flags show up in `ps` and shell history.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import os
import signal
import sys
from collections.abc import Awaitable, Callable
from pathlib import Path
from typing import Annotated, Any
from urllib.parse import urlsplit

import typer

from splitrelay.cli.agent import parse_listen

app = typer.Typer(help="The regional relay: joins callers' WebRTC media and carries Opus to inference.")
bootstrap_app = typer.Typer(
    help="A relay instance's AWS runtime (relay/aws_bootstrap.py), run by the user data's systemd units.",
    no_args_is_help=True,
)
app.add_typer(bootstrap_app, name="bootstrap")

SIGNING_KEY_ENV = "SPLITRELAY_RELAY_SIGNING_KEY"
EDGE_URL_ENV = "SPLITRELAY_EDGE_URL"
RELAY_ID_ENV = "SPLITRELAY_RELAY_ID"
SFU_SECRET_ENV = "SPLITRELAY_SFU_APP_SECRET"


def read_secret(env: str, file: Path | None, what: str) -> str | None:
    """A secret from a file (first line) or an environment variable; never echoed."""
    if file is not None:
        try:
            value = file.read_text(encoding="utf-8").strip()
        except OSError as exc:
            raise typer.BadParameter(f"{what} file {file}: {exc.strerror}") from None
        if not value:
            raise typer.BadParameter(f"{what} file {file} is empty")
        return value
    return os.environ.get(env) or None


def parse_port_range(value: str | None) -> tuple[int, int] | None:
    if value is None:
        return None
    low, sep, high = value.partition("-")
    if not sep or not low.isdigit() or not high.isdigit():
        raise typer.BadParameter(f"--port-range: expected LOW-HIGH such as 40000-40999, got {value!r}")
    return int(low), int(high)


def parse_stun(value: str) -> str:
    """Only STUN here: the relay needs its public address, not a TURN relay (it has a public IP)."""
    if not value.startswith("stun:") or len(value) > 256 or not value[5:].strip():
        raise typer.BadParameter(
            f"--stun: expected stun:HOST[:PORT] (at most 256 characters), got {value[:64]!r}"
        )
    return value


MAX_INFERENCE_ENDPOINTS = 16


def parse_inference(values: list[str] | None) -> list[tuple[str, int]]:
    """``--inference`` repeated or comma-separated: the endpoints in the order a call tries them."""
    texts = [part.strip() for value in values or ["127.0.0.1:7000"] for part in value.split(",")]
    endpoints: list[tuple[str, int]] = []
    for text in texts:
        try:
            host, port = parse_listen(text)
        except typer.BadParameter as exc:
            raise typer.BadParameter(str(exc).replace("--listen", "--inference")) from None
        if port == 0:
            raise typer.BadParameter(f"--inference: port must be 1..65535, got 0 in {text!r}")
        if (host, port) not in endpoints:
            endpoints.append((host, port))
    if not 1 <= len(endpoints) <= MAX_INFERENCE_ENDPOINTS:
        raise typer.BadParameter(f"--inference: 1..{MAX_INFERENCE_ENDPOINTS} endpoints, got {len(endpoints)}")
    return endpoints


_CALL_FLAGS = {
    "barge_in_confirm_ms": "--barge-in-confirm-ms",
    "barge_in_candidate_dbov": "--barge-in-candidate-dbov",
    "barge_in_sustain_ms": "--barge-in-sustain-ms",
    "heard_lag_ms": "--heard-lag-ms",
    "barge_in_retry_ms": "--barge-in-retry-ms",
}


def barge_in_settings(
    confirm_ms: int, candidate_dbov: float, sustain_ms: int, heard_lag_ms: int = 20, retry_ms: int = 0
) -> dict[str, Any]:
    """The pause-and-confirm settings of CallConfig, checked there; an error names the flag."""
    from splitrelay.relay.call import CallConfig

    settings: dict[str, Any] = {
        "barge_in_confirm_ms": confirm_ms,
        "barge_in_candidate_dbov": candidate_dbov,
        "barge_in_sustain_ms": sustain_ms,
        "heard_lag_ms": heard_lag_ms,
        "barge_in_retry_ms": retry_ms,
    }
    try:
        CallConfig(**settings)
    except ValueError as exc:
        message = str(exc)
        for name, flag in _CALL_FLAGS.items():
            message = message.replace(name, flag)
        raise typer.BadParameter(message) from None
    return settings


@app.command("serve")
def serve(
    host: Annotated[str, typer.Option(help="Address of the control API.")] = "127.0.0.1",
    port: Annotated[int, typer.Option(help="Port of the control API (0 picks a free one).")] = 8700,
    inference: Annotated[
        list[str] | None,
        typer.Option(
            help="Inference service HOST:PORT (UDP wire protocol); repeat or comma-separate for more: "
            "calls start on the first, and a call whose agent is lost or refuses moves to the next "
            "(default 127.0.0.1:7000)."
        ),
    ] = None,
    agent_timeout: Annotated[
        float,
        typer.Option(
            help="Seconds without anything from a call's agent (one that sends keep-alives) before it is "
            "lost: the call moves to the next --inference, or ends (agent_lost). 0 turns the watch off."
        ),
    ] = 0.8,
    barge_in_confirm_ms: Annotated[
        int,
        typer.Option(
            help="Pause and confirm barge-in: how long (ms, 0..2000) playout stays paused for the agent's "
            "verdict on a barge-in candidate; 0 flushes at once on speech (no candidates)."
        ),
    ] = 0,
    barge_in_candidate_dbov: Annotated[
        float,
        typer.Option(help="With --barge-in-confirm-ms: the level (dBov, -127..0) that raises a candidate."),
    ] = -50.0,
    barge_in_sustain_ms: Annotated[
        int,
        typer.Option(
            help="With --barge-in-confirm-ms: speech (ms, 20..2000) by level that confirms a candidate "
            "the agent did not answer within the window."
        ),
    ] = 100,
    barge_in_retry_ms: Annotated[
        int,
        typer.Option(
            help="With --barge-in-confirm-ms: after the agent rejected a candidate, speech for this long "
            "(ms, 0 or 100..5000) without a silent packet raises a new one; 0: only a new onset does."
        ),
    ] = 0,
    heard_lag_ms: Annotated[
        int,
        typer.Option(
            help="At a barge-in, the heard position reported to the agent leaves out the measured RTCP "
            "round trip plus this (ms, 0..1000): what the relay cannot measure, the SFU→caller leg and "
            "the caller's jitter buffer."
        ),
    ] = 20,
    candidate_address: Annotated[
        list[str] | None,
        typer.Option(help="Local address for ICE host candidates (repeat; default: all but loopback)."),
    ] = None,
    port_range: Annotated[
        str | None, typer.Option(help="UDP port range for media, LOW-HIGH: one port per call.")
    ] = None,
    media_port: Annotated[
        int | None,
        typer.Option(
            help="One UDP port for every call: worker i uses MEDIA_PORT+i (a demultiplexer routes by ICE "
            "ufrag, docs/architecture.md). Needs one --candidate-address; not with --port-range."
        ),
    ] = None,
    impair: Annotated[
        str | None,
        typer.Option(
            help="Impair every call's media leg of this relay in userspace, both ways (SFU mode: the "
            "SFU↔relay leg), e.g. loss=2%,burst=3,jitter=30ms,reorder=1%,duplicate=0.5% "
            "(docs/local-stack.md). For testing: a kernel without netem."
        ),
    ] = None,
    public_address: Annotated[
        str | None,
        typer.Option(
            help="Public IPv4 mapped 1:1 onto this host (e.g. an Elastic IP), advertised in ICE.",
            envvar="SPLITRELAY_PUBLIC_ADDRESS",
        ),
    ] = None,
    stun: Annotated[
        list[str] | None,
        typer.Option(
            help="STUN URL for a public (server-reflexive) candidate behind NAT; repeatable. Prefer an IP "
            "address: a name is looked up at every call's set-up (a resolver that drops a query costs 5 s)."
        ),
    ] = None,
    sfu_url: Annotated[
        str | None, typer.Option(help="Realtime SFU API base, e.g. https://rtc.live.cloudflare.com/v1.")
    ] = None,
    sfu_app_id: Annotated[
        str | None, typer.Option(help="Realtime SFU app id (secret: $" + SFU_SECRET_ENV + ").")
    ] = (None),
    signing_key_file: Annotated[
        Path | None, typer.Option(help=f"File with the edge signing key (default: ${SIGNING_KEY_ENV}).")
    ] = None,
    max_calls: Annotated[int, typer.Option(help="Calls each process takes before refusing (503).")] = 1000,
    workers: Annotated[
        int, typer.Option(help="Relay processes, one per core; >1 adds a supervisor that routes calls.")
    ] = 1,
    edge_url: Annotated[
        str | None,
        typer.Option(
            help="The edge's base URL: heartbeats and call-end notices go there (off when unset).",
            envvar=EDGE_URL_ENV,
        ),
    ] = None,
    relay_id: Annotated[
        str | None,
        typer.Option(
            help="This relay's id in the edge's registry (needed with --edge-url).", envvar=RELAY_ID_ENV
        ),
    ] = None,
    heartbeat_interval: Annotated[
        float, typer.Option(help="Seconds between heartbeats to the edge (0.05..10).")
    ] = 0.25,
    drain_grace: Annotated[
        float,
        typer.Option(
            help="On SIGTERM: drain, wait up to this many seconds for calls to end, then stop "
            "(keep it under the service manager's stop timeout: the deploy's unit sets TimeoutStopSec "
            "to this plus 15 s)."
        ),
    ] = 30.0,
    json_output: Annotated[
        bool, typer.Option("--json", help="Print a JSON 'ready' line with the URL.")
    ] = False,
    use_uvloop: Annotated[bool, typer.Option("--uvloop/--no-uvloop", help="Run on uvloop.")] = True,
) -> None:
    """Run one relay process until SIGINT or SIGTERM.

    SIGTERM drains first: the edge is told (it stops choosing this relay), new calls are refused, and
    live calls get up to --drain-grace seconds to end before the rest are closed (the edge is told of
    each). SIGINT stops at once. The wire key shared with inference comes from $SPLITRELAY_WIRE_KEY
    (docs/wire-protocol.md).
    """
    from splitrelay.contract.signing import check_key
    from splitrelay.inference.wire_auth import WireKeyError, WireKeyring
    from splitrelay.relay.media.peer import CandidatePolicy, VoicePeerConfig
    from splitrelay.relay.server import RelayServer, RelaySettings, SfuSettings, freeze_startup_heap

    key = read_secret(SIGNING_KEY_ENV, signing_key_file, "signing key")
    if key is None:
        raise typer.BadParameter(f"no signing key: set ${SIGNING_KEY_ENV} or pass --signing-key-file")
    try:
        WireKeyring.from_env()  # checked here for a clear error; each RelayLink reads it from the environment
    except WireKeyError as exc:
        raise typer.BadParameter(str(exc)) from None
    try:
        check_key(key.encode(), "signing key")
        if public_address is not None:
            VoicePeerConfig(public_address=public_address)  # validates it
        candidates = CandidatePolicy(
            addresses=tuple(candidate_address) if candidate_address else None,
            port_range=parse_port_range(port_range),
        )
    except ValueError as exc:
        raise typer.BadParameter(str(exc)) from None
    if media_port is not None:
        if port_range is not None:
            raise typer.BadParameter("--media-port: give --media-port or --port-range, not both")
        if not 1024 <= media_port <= 65535 - (workers - 1):
            raise typer.BadParameter(
                f"--media-port: must be 1024..{65535 - (workers - 1)} (one port per worker), got {media_port}"
            )
        if not candidate_address or len(candidate_address) != 1:
            raise typer.BadParameter(
                "--media-port: needs exactly one --candidate-address (the socket's address)"
            )
    endpoints = parse_inference(inference)
    barge = barge_in_settings(
        barge_in_confirm_ms, barge_in_candidate_dbov, barge_in_sustain_ms, heard_lag_ms, barge_in_retry_ms
    )
    from splitrelay.relay.media.impair import ImpairmentError, parse_impairment

    try:
        impairment = parse_impairment(impair) if impair is not None else None
    except ImpairmentError as exc:
        raise typer.BadParameter(f"--impair: {exc}") from None
    if agent_timeout and not 0.4 <= agent_timeout <= 60:
        raise typer.BadParameter(f"--agent-timeout must be 0 (off) or 0.4..60 s, got {agent_timeout}")
    sfu = None
    if sfu_url is not None:
        secret = os.environ.get(SFU_SECRET_ENV)
        if not sfu_app_id or not secret:
            raise typer.BadParameter(f"--sfu-url needs --sfu-app-id and ${SFU_SECRET_ENV}")
        sfu = SfuSettings(sfu_url, sfu_app_id, secret)
    if not 1 <= max_calls <= 100_000:
        raise typer.BadParameter(f"--max-calls must be 1..100000, got {max_calls}")
    if not 1 <= workers <= 256:
        raise typer.BadParameter(f"--workers must be 1..256, got {workers}")
    if not 0 <= drain_grace <= 3600:
        raise typer.BadParameter(f"--drain-grace must be 0..3600 s, got {drain_grace}")
    edge = None
    if edge_url is not None or relay_id is not None:
        from splitrelay.relay.edge_link import EdgeLinkSettings

        if not edge_url or not relay_id:
            raise typer.BadParameter("--edge-url and --relay-id go together (heartbeats name the relay)")
        try:
            edge = EdgeLinkSettings(edge_url, relay_id, key.encode(), interval_s=heartbeat_interval)
        except ValueError as exc:
            raise typer.BadParameter(str(exc)) from None
    from splitrelay.relay.call import CallConfig, impaired

    settings = RelaySettings(
        signing_keys={"default": key.encode()},
        inference=endpoints[0],
        inference_more=tuple(endpoints[1:]),
        relay_id=relay_id,
        agent_timeout_s=agent_timeout,
        call=impaired(CallConfig(**barge), impairment),
        host=host,
        port=port,
        candidates=candidates,
        stun_urls=tuple(parse_stun(u) for u in stun or ()),
        public_address=public_address,
        sfu=sfu,
        max_calls=max_calls,
        edge=edge,
        media_port=media_port,
    )
    drainers: list[Callable[[], Awaitable[int]]] = []

    async def run_single(stop: asyncio.Event) -> str:
        server = RelayServer(settings)
        await server.start()
        stack.push_async_callback(server.stop)
        drainers.append(lambda: server.drain(drain_grace))
        freeze_startup_heap()
        return server.url

    async def run_supervisor(stop: asyncio.Event) -> str:
        from splitrelay.contract.signing import Verifier
        from splitrelay.relay.control import create_app
        from splitrelay.relay.server import ControlServer, drain_for_shutdown
        from splitrelay.relay.workers import WorkerPool, new_internal_key, spawn_workers

        config = {
            "inference": list(settings.inference),
            "inference_more": [list(e) for e in settings.inference_more],
            "relay_id": relay_id,
            "agent_timeout_s": agent_timeout,
            "call": barge,
            "impair": impair,
            "candidate_addresses": list(candidates.addresses or ()),
            "port_range": list(candidates.port_range) if candidates.port_range else None,
            "media_port": media_port,
            "max_calls": max_calls,
            "stun_urls": list(settings.stun_urls),
            "public_address": public_address,
            "sfu": {"base_url": sfu.base_url, "app_id": sfu.app_id, "secret_env": SFU_SECRET_ENV}
            if sfu
            else None,
        }
        internal_key = new_internal_key()
        pool = WorkerPool(await spawn_workers(workers, config, internal_key, env={}), internal_key)
        link = None
        if edge is not None:
            from splitrelay.relay.edge_link import EdgeLink

            link = EdgeLink(edge, pool.live_call_ids, draining=lambda: pool.draining)
            pool.on_ended, pool.on_stage = link.call_ended, link.call_stages  # the workers' reports
            stack.push_async_callback(link.aclose)  # after the pool's shutdown: its last call ends go out
        stack.push_async_callback(pool.shutdown)
        if link is not None:
            link.start()
            reconcile = asyncio.get_running_loop().create_task(_reconcile(pool))
            stack.callback(reconcile.cancel)
        control = ControlServer(create_app(pool, Verifier(keys=settings.signing_keys), edge=link), host, port)
        await control.start()
        stack.push_async_callback(control.stop)
        drainers.append(lambda: drain_for_shutdown(pool, link, drain_grace))
        return control.url

    stack = contextlib.AsyncExitStack()

    async def main() -> None:
        stop = asyncio.Event()
        terminated: list[bool] = []
        loop = asyncio.get_running_loop()
        loop.add_signal_handler(signal.SIGINT, stop.set)

        def on_sigterm() -> None:
            terminated.append(True)
            stop.set()

        loop.add_signal_handler(signal.SIGTERM, on_sigterm)
        async with stack:
            url = await (run_supervisor(stop) if workers > 1 else run_single(stop))
            ready = {"event": "ready", "url": url, "pid": os.getpid(), "workers": workers}
            if media_port is not None:
                ready["media_ports"] = [media_port + i for i in range(workers)]
            if json_output:
                print(json.dumps(ready), flush=True)
            else:
                print(
                    f"relay control API on {url} ({workers} process(es); inference "
                    f"{', '.join(f'{h}:{p}' for h, p in endpoints)}); Ctrl-C stops"
                )
            await stop.wait()
            if terminated and drainers:
                stop.clear()  # a second signal during the drain stops at once
                draining = asyncio.ensure_future(drainers[0]())
                waiting = asyncio.ensure_future(stop.wait())
                await asyncio.wait({draining, waiting}, return_when=asyncio.FIRST_COMPLETED)
                waiting.cancel()
                if draining.done() and draining.exception() is None:
                    print(f"drained: {draining.result()} call(s) left to close", file=sys.stderr, flush=True)
                else:
                    draining.cancel()

    if use_uvloop:
        import uvloop

        uvloop.run(main())
    else:
        asyncio.run(main())
    sys.exit(0)


async def _reconcile(pool: Any, every_s: float = 1.0) -> None:
    """Supervisor with heartbeats: calls that ended inside a worker leave the beat's list within ~1 s."""
    while True:  # until cancelled at stop
        await asyncio.sleep(every_s)
        with contextlib.suppress(Exception):
            await pool.list_calls()


def _control_post(url: str, path: str, key_file: Path | None, timeout_s: float) -> dict[str, Any]:
    """One signed POST to a relay's control API; its JSON body, or a clear error (exit 2)."""
    import httpx

    from splitrelay.contract.signing import sign_headers

    key = read_secret(SIGNING_KEY_ENV, key_file, "signing key")
    if key is None:
        raise typer.BadParameter(f"no signing key: set ${SIGNING_KEY_ENV} or pass --signing-key-file")
    parts = urlsplit(url)
    if parts.scheme not in ("http", "https") or not parts.hostname or parts.query:
        raise typer.BadParameter(f"--url: expected http(s)://HOST:PORT, got {url[:80]!r}")
    full_path = parts.path.rstrip("/") + path
    try:
        headers = sign_headers(key.encode(), "POST", full_path, b"")
    except ValueError as exc:
        raise typer.BadParameter(str(exc)) from None
    try:
        response = httpx.post(url.rstrip("/") + path, content=b"", headers=headers, timeout=timeout_s)
    except httpx.HTTPError as exc:
        print(f"error: {path} on {url}: {type(exc).__name__}", file=sys.stderr)
        raise typer.Exit(2) from None
    try:
        doc: dict[str, Any] = response.json()
    except ValueError:
        doc = {}
    if response.status_code != 200:
        message = doc.get("error", {}).get("message") if isinstance(doc.get("error"), dict) else None
        print(f"error: {path}: HTTP {response.status_code} {message or ''}".rstrip(), file=sys.stderr)
        raise typer.Exit(2)
    return doc


def _drain_command(undo: bool, url: str, key_file: Path | None, json_output: bool) -> None:
    from splitrelay.contract.control import DRAIN_PATH, UNDRAIN_PATH

    doc = _control_post(url, UNDRAIN_PATH if undo else DRAIN_PATH, key_file, timeout_s=10.0)
    if json_output:
        print(json.dumps(doc))
        return
    seen = doc.get("edge_acknowledged")
    edge = {True: "the edge acknowledged", False: "the edge did NOT acknowledge", None: "no edge link"}
    state = "draining: takes no new calls" if not undo else "taking calls again"
    print(f"{state}; {doc.get('live_calls', '?')} live call(s); {edge.get(seen, str(seen))}")


URL_OPTION = Annotated[str, typer.Option(help="The relay's control API.")]
KEY_FILE_OPTION = Annotated[
    Path | None, typer.Option(help=f"File with the edge signing key (default: ${SIGNING_KEY_ENV}).")
]
JSON_OPTION = Annotated[bool, typer.Option("--json", help="Print the relay's answer as JSON.")]


@app.command("drain")
def drain(
    url: URL_OPTION = "http://127.0.0.1:8700",
    signing_key_file: KEY_FILE_OPTION = None,
    json_output: JSON_OPTION = False,
) -> None:
    """Stop a relay taking new calls (the edge hears first); live calls go on. Undo with `undrain`."""
    _drain_command(False, url, signing_key_file, json_output)


@app.command("undrain")
def undrain(
    url: URL_OPTION = "http://127.0.0.1:8700",
    signing_key_file: KEY_FILE_OPTION = None,
    json_output: JSON_OPTION = False,
) -> None:
    """Let a drained relay take calls again (the edge is told)."""
    _drain_command(True, url, signing_key_file, json_output)


@app.command("worker", hidden=True)
def worker() -> None:
    """One per-core relay process of `serve --workers N` (its settings come from the environment)."""
    from splitrelay.relay.workers import worker_main

    worker_main()


# -- `splitrelay relay bootstrap`: what the instance's systemd units run ------------------------------


@bootstrap_app.callback()
def bootstrap(
    ctx: typer.Context,
    stack: Annotated[str, typer.Option(help="Pulumi stack name (SSM prefix /splitrelay/STACK).")],
    aws_region: Annotated[str, typer.Option(help="This instance's AWS region.")],
) -> None:
    """A relay instance's AWS runtime: secrets from SSM, a stable address, self-health (docs/deploy.md)."""
    ctx.obj = (stack, aws_region)


def _bootstrap_step(run: Callable[[], int]) -> None:
    """Run one sub-command; a BootstrapError is one line on stderr and exit status 2, never a traceback."""
    from splitrelay.relay.aws_bootstrap import BootstrapError

    try:
        code = run()
    except BootstrapError as exc:
        print(f"error: {exc}", file=sys.stderr)
        raise typer.Exit(2) from None
    raise typer.Exit(code)


@bootstrap_app.command("prepare")
def bootstrap_prepare(
    ctx: typer.Context,
    region_key: Annotated[str, typer.Option(help="The relay region's key in the stack config.")],
    tls_dir: Annotated[Path, typer.Option(help="Directory for the origin TLS files nginx serves.")],
    accelerator: Annotated[
        bool, typer.Option("--accelerator", help="stableAddress is global-accelerator.")
    ] = False,
) -> None:
    """Claim an address slot, join its accelerator, write TLS files; prints the claim as JSON."""
    from splitrelay.relay import aws_bootstrap

    stack, aws_region = ctx.obj

    def run() -> int:
        print(json.dumps(aws_bootstrap.prepare(stack, aws_region, region_key, tls_dir, accelerator)))
        return 0

    _bootstrap_step(run)


@bootstrap_app.command("release")
def bootstrap_release(
    ctx: typer.Context,
    region_key: Annotated[str, typer.Option(help="The relay region's key in the stack config.")],
    accelerator: Annotated[
        bool, typer.Option("--accelerator", help="stableAddress is global-accelerator.")
    ] = False,
) -> None:
    """Leave the accelerator and give the address back."""
    from splitrelay.relay import aws_bootstrap

    stack, aws_region = ctx.obj

    def run() -> int:
        aws_bootstrap.release(stack, aws_region, region_key, accelerator)
        return 0

    _bootstrap_step(run)


@bootstrap_app.command("exec", context_settings={"allow_extra_args": True, "ignore_unknown_options": True})
def bootstrap_exec(
    ctx: typer.Context,
    command: Annotated[list[str] | None, typer.Argument(help="-- COMMAND [ARGS...]")] = None,
) -> None:
    """Load secrets into the environment and exec COMMAND (never on disk, never on its command line)."""
    from splitrelay.relay import aws_bootstrap

    stack, aws_region = ctx.obj

    def run() -> int:
        aws_bootstrap.exec_with_secrets(stack, aws_region, command or [])
        return 0  # reached only when exec is replaced (tests)

    _bootstrap_step(run)


@bootstrap_app.command("check-health")
def bootstrap_check_health(
    ctx: typer.Context,
    url: Annotated[str, typer.Option(help="The relay's health URL.")] = "http://127.0.0.1:8700/healthz",
    attempts: Annotated[int, typer.Option(help="Probes before the relay counts as dead.")] = 3,
) -> None:
    """Probe the relay once; report Unhealthy if it is dead (exit 1)."""
    from splitrelay.relay import aws_bootstrap

    stack, aws_region = ctx.obj
    _bootstrap_step(lambda: 0 if aws_bootstrap.check_health_once(stack, aws_region, url, attempts) else 1)
