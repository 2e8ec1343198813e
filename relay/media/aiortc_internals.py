"""Every contact relay/media has with aiortc's and aioice's private internals, in one place.

aiortc has no public API for encoded media, port ranges or loopback candidates, so the fast path
borrows its SRTP sessions and ICE socket and the peer set-up patches candidate gathering. These are
pinned to exact versions (pyproject.toml); ``check_static`` and ``check_peer`` say what no longer
matches, and tests/integration/test_aiortc_internals.py fails loudly on an upgrade.
"""

from __future__ import annotations

import asyncio
import collections
import contextlib
import errno
import importlib.metadata
import inspect
import ipaddress
import random
import types
from collections.abc import Callable, Iterator
from contextvars import ContextVar
from dataclasses import dataclass
from typing import Any

import aioice.candidate
import aioice.ice
import aioice.stun
import aiortc.rtcdtlstransport
import aiortc.rtcrtpreceiver
import pylibsrtp
from aiortc import (
    RTCCertificate,
    RTCDtlsTransport,
    RTCIceTransport,
    RTCPeerConnection,
    RTCRtpReceiver,
    RTCRtpSender,
    RTCRtpTransceiver,
)
from aiortc.rtcicetransport import RTCIceGatherer

from splitrelay.relay.media.consent import ConsentCredentials
from splitrelay.relay.media.shared_port import SharedUdpPort, VirtualTransport

PINNED_VERSIONS = {"aiortc": "1.16.0", "aioice": "0.13.0"}
RECEIVE_SOURCE_LINES = 22
"""Non-blank, non-comment lines of aiortc 1.16.0's RTCRtpReceiver.receive (docstring lines excluded):
skip_decoder copies what it does, so any change to it must be looked at."""
UPGRADE_MESSAGE = (
    "aiortc upgraded: re-verify relay/media against the new aiortc/aioice source "
    "(relay/media/aiortc_internals.py lists every private contact), then update PINNED_VERSIONS"
)

Address = tuple[str, int]
DatagramHandler = Callable[[bytes, Address], None]


class InternalsChanged(RuntimeError):
    """A private aiortc/aioice attribute no longer has the shape relay/media relies on."""


def _changed(what: str) -> InternalsChanged:
    return InternalsChanged(f"{what}. {UPGRADE_MESSAGE}")


# --- candidate gathering: host addresses and port range ------------------------------------------


@dataclass(frozen=True)
class _GatherScope:
    addresses: tuple[str, ...] | None
    port_range: tuple[int, int] | None
    shared_port: SharedUdpPort | None = None


# Set around setLocalDescription(); aiortc gathers in tasks created there, which copy the context, so
# the policy applies to that peer connection only and never leaks to concurrent ones.
_GATHER_SCOPE: ContextVar[_GatherScope | None] = ContextVar("splitrelay_gather_scope", default=None)
# A reload of this module must not take its own hook for aioice's function.
_ORIGINAL_GET_HOST_ADDRESSES: Callable[[bool, bool], list[str]] = getattr(
    aioice.ice.get_host_addresses, "splitrelay_original", aioice.ice.get_host_addresses
)
_LOOP_MARK = "_splitrelay_port_range_installed"


def _scoped_get_host_addresses(use_ipv4: bool, use_ipv6: bool) -> list[str]:
    scope = _GATHER_SCOPE.get()
    if scope is None or (scope.addresses is None and scope.shared_port is None):
        return _ORIGINAL_GET_HOST_ADDRESSES(use_ipv4, use_ipv6)
    if scope.shared_port is not None and not scope.shared_port.wildcard:
        candidates: tuple[str, ...] = (scope.shared_port.host,)  # the one address the port is bound to
    elif scope.addresses is not None:
        candidates = scope.addresses
    else:
        return _ORIGINAL_GET_HOST_ADDRESSES(use_ipv4, use_ipv6)
    out = []
    for address in candidates:
        version = ipaddress.ip_address(address).version
        if (version == 4 and use_ipv4) or (version == 6 and use_ipv6):
            out.append(address)
    return out


_scoped_get_host_addresses.splitrelay_original = _ORIGINAL_GET_HOST_ADDRESSES  # type: ignore[attr-defined]


def _install_host_address_hook() -> None:
    if aioice.ice.get_host_addresses is not _scoped_get_host_addresses:
        current = aioice.ice.get_host_addresses
        if getattr(current, "splitrelay_original", current) is not _ORIGINAL_GET_HOST_ADDRESSES:
            raise _changed("aioice.ice.get_host_addresses was replaced by someone else")
        aioice.ice.get_host_addresses = _scoped_get_host_addresses


def _install_port_range_hook(loop: asyncio.AbstractEventLoop) -> None:
    """Wrap the loop's create_datagram_endpoint, which aioice calls with ``local_addr=(address, 0)``.

    Under a port range it binds inside the range; under a shared port it binds nothing and returns the
    call's virtual transport on the shared socket (relay/media/shared_port.py).
    """
    if getattr(loop, _LOOP_MARK, False):
        return
    original = loop.create_datagram_endpoint

    async def create_datagram_endpoint(*args: Any, **kwargs: Any) -> Any:
        scope = _GATHER_SCOPE.get()
        local_addr = kwargs.get("local_addr")
        if scope is None or local_addr is None or local_addr[1] != 0:
            return await original(*args, **kwargs)
        if scope.shared_port is not None:
            factory = args[0] if args else kwargs["protocol_factory"]
            return _attach_shared(scope.shared_port, factory, str(local_addr[0]))
        if scope.port_range is None:
            return await original(*args, **kwargs)
        low, high = scope.port_range
        count = high - low + 1
        start = random.randrange(count)
        for i in range(count):
            kwargs["local_addr"] = (local_addr[0], low + (start + i) % count)
            try:
                return await original(*args, **kwargs)
            except OSError as exc:
                if exc.errno != errno.EADDRINUSE:
                    raise
        raise OSError(errno.EADDRINUSE, f"no free UDP port in port_range {low}-{high} on {local_addr[0]}")

    setattr(loop, "create_datagram_endpoint", create_datagram_endpoint)  # noqa: B010 (method override)
    setattr(loop, _LOOP_MARK, True)


def _attach_shared(
    port: SharedUdpPort, factory: Callable[[], asyncio.DatagramProtocol], host: str
) -> tuple[asyncio.DatagramTransport, asyncio.DatagramProtocol]:
    """aioice's host-candidate endpoint on a shared port: its StunProtocol on a virtual transport.

    The call is registered under its aioice Connection's ufrag and password (minted by VoicePeer through
    ``set_local_ufrag``), so the demultiplexer routes and authenticates its STUN. OSError when the port
    refuses it: aioice then skips the address, as for a failed bind.
    """
    protocol = factory()
    connection = getattr(protocol, "receiver", None)
    if not isinstance(protocol, aioice.ice.StunProtocol) or not isinstance(connection, aioice.ice.Connection):
        raise _changed("aioice's host endpoint protocol is no longer a StunProtocol with .receiver")
    transport = port.attach(connection.local_username, connection.local_password, protocol, host)
    protocol.connection_made(transport)
    return transport, protocol


def set_local_ufrag(pc: RTCPeerConnection, ufrag: str) -> None:
    """Give ``pc``'s (one, bundled) ICE connection our ufrag, before its first offer or answer.

    aioice takes ``local_username`` only in Connection's constructor, which aiortc calls without it; the
    attribute is set on the new connection instead, before anything has read it.
    """
    aioice.ice.validate_username(ufrag)
    gatherer = dtls_transport(pc).transport.iceGatherer
    connection = getattr(gatherer, "_connection", None)
    if not isinstance(gatherer, RTCIceGatherer) or not isinstance(connection, aioice.ice.Connection):
        raise _changed("RTCIceGatherer._connection is not an aioice Connection")
    if gatherer.state != "new":
        raise RuntimeError(f"ICE gatherer is {gatherer.state!r}: set the ufrag before the first offer/answer")
    if not isinstance(getattr(connection, "_local_username", None), str):
        raise _changed("aioice Connection._local_username is missing")
    setattr(connection, "_local_username", ufrag)  # noqa: B010 (the private contact)
    if connection.local_username != ufrag or gatherer.getLocalParameters().usernameFragment != ufrag:
        raise _changed("aioice Connection.local_username no longer reads Connection._local_username")


def local_ufrag(pc: RTCPeerConnection) -> str:
    """The ufrag ``pc``'s ICE connection uses (the demultiplexer's key on a shared port)."""
    return str(dtls_transport(pc).transport.iceGatherer.getLocalParameters().usernameFragment)


@contextlib.contextmanager
def gathering_scope(
    addresses: tuple[str, ...] | None,
    port_range: tuple[int, int] | None,
    shared_port: SharedUdpPort | None = None,
) -> Iterator[None]:
    """Apply a host-address list and a UDP port range or a shared port to the candidates gathered here."""
    _install_host_address_hook()
    if port_range is not None or shared_port is not None:
        _install_port_range_hook(asyncio.get_running_loop())
    token = _GATHER_SCOPE.set(_GatherScope(addresses, port_range, shared_port))
    try:
        yield
    finally:
        _GATHER_SCOPE.reset(token)


# --- aiortc's own RTCP loops ---------------------------------------------------------------------


def silence_rtcp(transceiver: RTCRtpTransceiver) -> None:
    """Replace the sender's and receiver's RTCP loops with idle ones, before the connection starts them.

    aiortc's idle sender would report zero packets for the SSRC the fast path sends on, and its BYE on
    stop would end the stream; the fast path sends the real reports instead.
    """
    for owner in (transceiver.sender, transceiver.receiver):
        prefix = "_RTCRtpSender" if isinstance(owner, RTCRtpSender) else "_RTCRtpReceiver"
        started = getattr(owner, f"{prefix}__rtcp_started", None)
        exited = getattr(owner, f"{prefix}__rtcp_exited", None)
        task = getattr(owner, f"{prefix}__rtcp_task", "missing")
        if (
            not isinstance(started, asyncio.Event)
            or not isinstance(exited, asyncio.Event)
            or task == "missing"
        ):
            raise _changed(f"{type(owner).__name__} no longer has __rtcp_started/__rtcp_exited/__rtcp_task")
        if task is not None:
            raise RuntimeError(f"{type(owner).__name__}: RTCP already running; silence it before connecting")
        setattr(owner, "_run_rtcp", _idle_rtcp(started, exited))  # noqa: B010 (shadows the method)


def _idle_rtcp(started: asyncio.Event, exited: asyncio.Event) -> Callable[[], Any]:
    async def run_rtcp() -> None:
        started.set()
        try:
            await asyncio.get_running_loop().create_future()  # until stop() cancels it
        finally:
            exited.set()

    run_rtcp.splitrelay_idle = True  # type: ignore[attr-defined]
    return run_rtcp


def rtcp_silenced(transceiver: RTCRtpTransceiver) -> bool:
    return all(
        getattr(getattr(owner, "_run_rtcp", None), "splitrelay_idle", False)
        for owner in (transceiver.sender, transceiver.receiver)
    )


def skip_decoder(receiver: RTCRtpReceiver) -> None:
    """Let ``receiver`` start without aiortc's decoder thread (before the connection starts it).

    aiortc starts one OS thread per receiver to decode media into its track; the fast path takes every
    RTP packet before aiortc sees it, so the thread only idled: one thread, its lock, queue and
    condition per call, and a blocking ``join`` on the event loop when the call closes. The replacement
    ``receive`` does what aiortc's does (codecs, RTX map, registration with the DTLS transport, the RTCP
    task) without the thread; aiortc then feeds no decoder (``_handle_rtp_packet`` checks for one) and
    its stop has none to join. The receiver's track never yields a frame (none is read).
    """
    prefix = "_RTCRtpReceiver__"
    needed = ("started", "codecs", "rtx_ssrc", "transport", "rtcp_task", "decoder_thread")
    missing = [name for name in needed if not hasattr(receiver, prefix + name)]
    if missing:
        raise _changed(f"RTCRtpReceiver no longer has {', '.join(missing)}")
    if getattr(receiver, prefix + "started"):
        raise RuntimeError("RTCRtpReceiver already started: skip its decoder before connecting")
    setattr(receiver, "receive", _receive_without_decoder(receiver))  # noqa: B010 (shadows the method)


def _receive_without_decoder(receiver: RTCRtpReceiver) -> Callable[[Any], Any]:
    async def receive(parameters: Any) -> None:
        state = vars(receiver)
        if state["_RTCRtpReceiver__started"]:
            return
        for codec in parameters.codecs:
            state["_RTCRtpReceiver__codecs"][codec.payloadType] = codec
        for encoding in parameters.encodings:
            if encoding.rtx:
                state["_RTCRtpReceiver__rtx_ssrc"][encoding.rtx.ssrc] = encoding.ssrc
        state["_RTCRtpReceiver__transport"]._register_rtp_receiver(receiver, parameters)
        state["_RTCRtpReceiver__rtcp_task"] = asyncio.ensure_future(receiver._run_rtcp())
        state["_RTCRtpReceiver__started"] = True

    receive.splitrelay_no_decoder = True  # type: ignore[attr-defined]
    return receive


def decoder_skipped(receiver: RTCRtpReceiver) -> bool:
    return bool(getattr(getattr(receiver, "receive", None), "splitrelay_no_decoder", False))


# --- SRTP sessions and the ICE socket ------------------------------------------------------------


@dataclass(frozen=True)
class SrtpLink:
    """What the fast path borrows from a connected peer: the SRTP sessions and the nominated socket."""

    protocol: asyncio.DatagramProtocol
    transport: asyncio.DatagramTransport
    remote_addr: Address
    rx: pylibsrtp.Session
    tx: pylibsrtp.Session
    connection: aioice.ice.Connection | None = None


def take_queued_media(link: SrtpLink) -> list[bytes]:
    """SRTP/SRTCP datagrams aioice queued before the hook (they arrived while DTLS was finishing).

    Without this, the caller's first packets (sent the moment its side connected) would be read by
    aiortc's own media stack and lost to us. Other queued items (DTLS, the end-of-stream None) stay.
    """
    queue = getattr(link.connection, "_queue", None)
    if not isinstance(queue, asyncio.Queue):
        if link.connection is None:
            return []
        raise _changed("aioice Connection._queue is no longer an asyncio.Queue")
    media: list[bytes] = []
    keep: list[object] = []
    for _ in range(queue.qsize()):  # bounded by what is queued now
        item = queue.get_nowait()
        if isinstance(item, tuple) and isinstance(item[0], bytes) and item[0] and 127 < item[0][0] < 192:
            media.append(item[0])
        else:
            keep.append(item)
    for item in keep:
        queue.put_nowait(item)
    return media


def dtls_transport(pc: RTCPeerConnection) -> RTCDtlsTransport:
    """The one (BUNDLE) DTLS transport that carries every transceiver of ``pc``."""
    transports = {id(t.receiver.transport): t.receiver.transport for t in pc.getTransceivers()}
    if len(transports) != 1:
        raise ValueError(f"peer connection: expected one bundled DTLS transport, found {len(transports)}")
    (dtls,) = transports.values()
    return dtls


SRTP_PROFILE_NAMES = ("SRTP_AEAD_AES_256_GCM", "SRTP_AEAD_AES_128_GCM", "SRTP_AES128_CM_SHA1_80")
"""The DTLS-SRTP profiles aiortc can negotiate, in its order of preference (RFC 5764, RFC 7714 names)."""


def restrict_srtp_profiles(pc: RTCPeerConnection, names: tuple[str, ...]) -> None:
    """Offer and accept only ``names`` in ``pc``'s DTLS handshake (its transceivers must exist).

    aiortc negotiates AES-GCM first and has no public option; a peer restricted to
    SRTP_AES128_CM_SHA1_80 makes both ends use it, so the relay's cost can be measured under the profile
    an SFU may pick. Must run before DTLS starts (before the remote description is applied).
    """
    unknown = [name for name in names if name not in SRTP_PROFILE_NAMES]
    if unknown or not names:
        raise ValueError(f"SRTP profiles must be some of {', '.join(SRTP_PROFILE_NAMES)}; got {list(names)}")
    available = list(getattr(aiortc.rtcdtlstransport, "SRTP_PROFILES", []))
    chosen = [p for p in available if p.openssl_profile.decode() in names]
    if not chosen:
        raise ValueError(f"this libsrtp offers none of {list(names)}")
    transceivers = pc.getTransceivers()
    if not transceivers:
        raise ValueError("restrict_srtp_profiles: add the transceivers first")
    for transceiver in transceivers:
        dtls = transceiver.receiver.transport
        if not isinstance(getattr(dtls, "_srtp_profiles", None), list):
            raise _changed("RTCDtlsTransport._srtp_profiles is not a list")
        if dtls.state != "new":
            raise RuntimeError(
                f"DTLS transport is {dtls.state!r}: restrict its SRTP profiles before it starts"
            )
        dtls._srtp_profiles = chosen


def srtp_link(dtls: RTCDtlsTransport) -> SrtpLink:
    if dtls.state != "connected":
        raise RuntimeError(f"DTLS transport is {dtls.state!r}: the fast path attaches once it is 'connected'")
    rx = getattr(dtls, "_rx_srtp", None)
    tx = getattr(dtls, "_tx_srtp", None)
    if not isinstance(rx, pylibsrtp.Session) or not isinstance(tx, pylibsrtp.Session):
        raise _changed("RTCDtlsTransport._rx_srtp/_tx_srtp are not pylibsrtp.Session")
    connection = getattr(dtls.transport, "_connection", None)
    nominated = getattr(connection, "_nominated", None)
    if not isinstance(connection, aioice.ice.Connection) or not isinstance(nominated, dict):
        raise _changed("RTCIceTransport._connection._nominated is missing")
    pair = nominated.get(1)
    if pair is None:
        raise RuntimeError("ICE has no nominated candidate pair for component 1")
    protocol = getattr(pair, "protocol", None)
    remote_addr = getattr(pair, "remote_addr", None)
    transport = getattr(protocol, "transport", None)
    if (
        not isinstance(protocol, asyncio.DatagramProtocol)
        or transport is None
        or not isinstance(remote_addr, tuple)
    ):
        raise _changed("aioice CandidatePair.protocol/.remote_addr/.protocol.transport changed")
    return SrtpLink(protocol, transport, remote_addr, rx, tx, connection)


def hook_datagrams(protocol: asyncio.DatagramProtocol, handler: DatagramHandler) -> DatagramHandler:
    """Route every datagram of the ICE socket to ``handler``; returns aioice's handler for the rest.

    An instance attribute shadows the method: asyncio (and uvloop, and aioice's TURN client) look the
    method up on each datagram.
    """
    if "datagram_received" in vars(protocol):
        raise RuntimeError("the ICE socket already has a datagram hook (one fast path per connection)")
    original: DatagramHandler = protocol.datagram_received
    setattr(protocol, "datagram_received", handler)  # noqa: B010 (shadows the method)
    return original


def unhook_datagrams(protocol: asyncio.DatagramProtocol, handler: DatagramHandler) -> None:
    if vars(protocol).get("datagram_received") is handler:
        del protocol.datagram_received


# --- consent freshness (RFC 7675) ----------------------------------------------------------------


def take_consent(connection: aioice.ice.Connection) -> ConsentCredentials | None:
    """Stop aioice's consent task on a connected ICE connection and return what relay/media/consent.py
    needs to run consent in its place; None (aioice keeps it) when the connection is not in that state.

    aioice's interval and failure count are read here, so whoever sets ``aioice.ice.CONSENT_INTERVAL``
    (tests speed it up) sets ours too.
    """
    task = getattr(connection, "_query_consent_task", "missing")
    tie_breaker = getattr(connection, "_tie_breaker", None)
    if task == "missing" or not isinstance(tie_breaker, int):
        raise _changed("aioice Connection._query_consent_task/_tie_breaker are missing")
    if not isinstance(task, asyncio.Task) or task.done() or getattr(connection, "_closing", True):
        return None
    remote_ufrag, remote_password = connection.remote_username, connection.remote_password
    if remote_ufrag is None or remote_password is None:
        return None
    task.cancel()
    setattr(connection, "_query_consent_task", None)  # noqa: B010 (close() then has nothing to stop)
    return ConsentCredentials(
        local_ufrag=connection.local_username,
        local_password=connection.local_password,
        remote_ufrag=remote_ufrag,
        remote_password=remote_password,
        controlling=bool(connection.ice_controlling),
        tie_breaker=tie_breaker,
        priority=aioice.candidate.candidate_priority(1, "prflx"),
        interval_s=float(aioice.ice.CONSENT_INTERVAL),
        max_failures=int(aioice.ice.CONSENT_FAILURES),
    )


def give_back_consent(connection: aioice.ice.Connection) -> None:
    """Restart aioice's consent task after ``take_consent`` (the fast path closed, the call goes on)."""
    if getattr(connection, "_closing", True) or getattr(connection, "_query_consent_task", None) is not None:
        return
    task = asyncio.get_running_loop().create_task(connection.query_consent())
    setattr(connection, "_query_consent_task", task)  # noqa: B010 (as connect() sets it)


def expire_consent(connection: aioice.ice.Connection) -> asyncio.Task[None]:
    """Consent expired: close the connection as aioice's ``query_consent`` does (the ICE transport then
    reports 'failed' and the call ends)."""
    return asyncio.get_running_loop().create_task(connection.close())


# --- releasing a closed peer: no cycles left for the collector -----------------------------------

_SSL: Any = getattr(aiortc.rtcdtlstransport, "SSL", None)  # pyOpenSSL's, as aiortc's DTLS uses it
_SSL_CLASSES: tuple[type, ...] = tuple(
    cls
    for cls in (
        getattr(_SSL, "Connection", None),
        getattr(_SSL, "Context", None),  # one per DTLS transport (RTCCertificate._create_ssl_context)
        getattr(_SSL, "_VerifyHelper", None),  # its verify callback's closure points back at it
    )
    if isinstance(cls, type)
)
PEER_CLASSES: tuple[type, ...] = (
    RTCPeerConnection,
    RTCRtpTransceiver,
    RTCRtpSender,
    RTCRtpReceiver,
    aiortc.rtcrtpreceiver.RemoteStreamTrack,
    RTCDtlsTransport,
    aiortc.rtcdtlstransport.RtpRouter,
    RTCCertificate,
    *_SSL_CLASSES,
    RTCIceTransport,
    RTCIceGatherer,
    aioice.ice.Connection,
    aioice.ice.StunProtocol,
    aioice.ice.CandidatePair,
    aioice.stun.Transaction,
    VirtualTransport,
)
"""The classes of which a peer connection owns its own instances (one or a few per call, never shared
with another peer): ``release_peer`` clears them, and only them."""
_CONTAINERS = (list, tuple, dict, set, frozenset, collections.deque)
RELEASE_LIMIT = 20_000
"""The most objects one release visits (a peer holds a few hundred)."""


def dismantle(roots: list[object], owned: tuple[type, ...], limit: int = RELEASE_LIMIT) -> int:
    """Clear the attributes of every instance of ``owned`` reachable from ``roots``; → how many.

    The walk goes from an owned instance through its attributes, and through plain containers (lists,
    dicts, tuples, sets, deques) and bound methods directly below them, to further owned instances; it
    never enters any other object, so nothing outside the peer (a shared codec list, the shared port,
    the event loop) is touched. Clearing breaks every reference cycle through those instances, so
    reference counting frees the peer's objects as soon as the last outside reference goes.
    """
    keep: list[object] = []  # alive until the end, so ids stay unique
    seen: set[int] = set()
    stack: list[tuple[object, int]] = [(root, 0) for root in roots]
    cleared = 0
    while stack and len(keep) < limit:  # bounded: each object once, at most ``limit``
        obj, depth = stack.pop()
        if id(obj) in seen:
            continue
        seen.add(id(obj))
        keep.append(obj)
        if isinstance(obj, _CONTAINERS):
            if depth < 3:  # containers of containers of an owned object's attribute, no further
                items = [*obj.keys(), *obj.values()] if isinstance(obj, dict) else list(obj)
                stack.extend((item, depth + 1) for item in items)
            continue
        if isinstance(obj, types.MethodType):
            stack.append((obj.__self__, depth + 1))
            continue
        if not isinstance(obj, owned):
            continue
        state = getattr(obj, "__dict__", None)
        if isinstance(state, dict):
            stack.extend((value, 0) for value in state.values())
            state.clear()
            cleared += 1
    return cleared


def release_peer(pc: RTCPeerConnection) -> int:
    """After ``await pc.close()``: clear what a closed peer's objects hold; → how many were cleared.

    aiortc and aioice tie each peer into reference cycles (the connection and its transceivers, the
    transports and their routers, the ICE connection and its protocols, event listeners as bound
    methods), so an ended call's few hundred objects wait for the cyclic collector. After this they are
    freed by reference counting, which is what lets the relay freeze its live calls (relay/gc_freeze.py)
    without leaking the ones that end. Any use of the peer afterwards fails (AttributeError).
    """
    if pc.connectionState != "closed":
        raise RuntimeError(f"peer connection is {pc.connectionState!r}: close it before releasing it")
    return dismantle([pc], PEER_CLASSES)


# --- upgrade checks ------------------------------------------------------------------------------


def installed_versions() -> dict[str, str]:
    return {name: importlib.metadata.version(name) for name in PINNED_VERSIONS}


def _source_has(owner: type, name: str, *needles: str) -> list[str]:
    """Which of ``needles`` the source of ``owner.name`` no longer contains."""
    label = f"{owner.__module__}.{owner.__qualname__}.{name}"
    try:
        target: Any = getattr(owner, name)
        if isinstance(target, property):
            target = target.fget
        source = inspect.getsource(target)
    except (AttributeError, OSError, TypeError):
        return [f"{label}: source unavailable"]
    return [f"{label} no longer contains {n!r}" for n in needles if n not in source]


def check_static() -> list[str]:
    """What no longer matches in the installed aiortc/aioice, without a connection; [] when all is well."""
    problems = [
        f"{name} {have} installed, {want} pinned"
        for name, want in PINNED_VERSIONS.items()
        if (have := installed_versions()[name]) != want
    ]
    params = list(inspect.signature(_ORIGINAL_GET_HOST_ADDRESSES).parameters)
    if params != ["use_ipv4", "use_ipv6"]:
        problems.append(f"aioice.ice.get_host_addresses parameters are {params}")
    problems += _source_has(aioice.ice.Connection, "gather_candidates", "get_host_addresses(")
    problems += _source_has(
        aioice.ice.Connection,
        "get_component_candidates",
        "loop.create_datagram_endpoint(",
        "local_addr=(address, 0)",
        "asyncio.get_running_loop()",
    )
    problems += _source_has(
        aioice.ice.Connection,
        "__init__",
        "self._nominated",
        "self._queue",
        "self._local_username = local_username",
        "self._local_password = local_password",
    )
    # The shared port (relay/media/shared_port.py): the ufrag we set, the endpoint we hand aioice, its close.
    problems += _source_has(aioice.ice.Connection, "local_username", "return self._local_username")
    problems += _source_has(aioice.ice.Connection, "local_password", "return self._local_password")
    problems += _source_has(
        aioice.ice.Connection,
        "get_component_candidates",
        "lambda: StunProtocol(self)",
        'get_extra_info("sockname")',
        "protocol.local_candidate = Candidate(",
    )
    problems += _source_has(aioice.ice.StunProtocol, "__init__", "self.receiver = receiver")
    problems += _source_has(aioice.ice.StunProtocol, "connection_made", "self.transport = ")
    problems += _source_has(aioice.ice.StunProtocol, "close", "self.transport.close()", "await self.__closed")
    problems += _source_has(aioice.ice.StunProtocol, "connection_lost", "self.__closed.set_result(True)")
    problems += _source_has(aioice.ice.StunProtocol, "send_stun", "self.transport.sendto(")
    problems += _source_has(aioice.ice.StunProtocol, "send_data", "self.transport.sendto(")
    problems += _source_has(
        aioice.ice.Connection, "request_received", "self._valid_username(", "check_message_integrity("
    )
    problems += _source_has(aioice.ice.Connection, "_valid_username", "== self.local_username")
    problems += _source_has(RTCIceGatherer, "getLocalParameters", "self._connection.local_username")
    problems += _source_has(RTCIceGatherer, "__init__", "self._connection = Connection(")
    problems += _source_has(
        aioice.ice.Connection, "data_received", "self._queue.put_nowait((data, component))"
    )
    problems += _source_has(aioice.ice.CandidatePair, "__init__", "self.protocol = protocol")
    # Consent freshness (relay/media/consent.py takes it over from a connected connection): aioice's task,
    # what its checks carry, how it answers a check and when it gives up.
    problems += _source_has(
        aioice.ice.Connection,
        "connect",
        "self._query_consent_task = asyncio.create_task(self.query_consent())",
    )
    problems += _source_has(aioice.ice.Connection, "__init__", "self._tie_breaker = ", "self._closing")
    problems += _source_has(
        aioice.ice.Connection,
        "query_consent",
        "CONSENT_INTERVAL * (0.8 + 0.4 * random.random())",
        "self.build_request(pair, nominate=False)",
        "integrity_key=self.remote_password.encode(",
        "retransmissions=0",
        "if failures >= CONSENT_FAILURES:",
        "return await self.close()",
    )
    problems += _source_has(
        aioice.ice.Connection,
        "build_request",
        'f"{self.remote_username}:{self.local_username}"',
        'candidate_priority(pair.component, "prflx")',
        '"ICE-CONTROLLING"] = self._tie_breaker',
        '"ICE-CONTROLLED"] = self._tie_breaker',
    )
    problems += _source_has(
        aioice.ice.Connection,
        "request_received",
        'response.attributes["XOR-MAPPED-ADDRESS"] = addr',
        "response.add_message_integrity(self.local_password.encode(",
        '"ICE-CONTROLLING" in message.attributes',
        '"ICE-CONTROLLED" in message.attributes',
    )
    problems += _source_has(aioice.ice.Connection, "check_incoming", '"USE-CANDIDATE" in message.attributes')
    problems += _source_has(aioice.stun.Message, "add_message_integrity", "self.add_fingerprint()")
    if not isinstance(inspect.getattr_static(aioice.ice.CandidatePair, "remote_addr"), property):
        problems.append("aioice CandidatePair.remote_addr is no longer a property")
    problems += _source_has(aioice.ice.StunProtocol, "datagram_received", "self.receiver.data_received(")
    problems += _source_has(RTCDtlsTransport, "__init__", "self._rx_srtp", "self._tx_srtp")
    problems += _source_has(
        RTCDtlsTransport, "_recv_next", "self._rx_srtp.unprotect", "self.transport._recv()"
    )
    problems += _source_has(RTCDtlsTransport, "_send_rtp", "self._tx_srtp.protect")
    # restrict_srtp_profiles: each transport's own list, what start() hands the SSL context and the keys
    problems += _source_has(RTCDtlsTransport, "__init__", "self._srtp_profiles = SRTP_PROFILES")
    problems += _source_has(RTCDtlsTransport, "start", "srtp_profiles=self._srtp_profiles")
    problems += _source_has(RTCDtlsTransport, "_setup_srtp", "for srtp_profile in self._srtp_profiles:")
    # A remote address several calls share (demux.py): an encrypted DTLS record (a close_notify) goes to
    # every call there whose handshake is over; each must drop, not fail on, a record that is not its own.
    problems += _source_has(
        RTCDtlsTransport, "_recv_next", "self._ssl.bio_write(data)", "except SSL.Error:", 'data = b""'
    )
    # The answerer takes the DTLS client role (a=setup:active): the SFU emulator answers the relay's offer,
    # so the relay is the DTLS server and the demultiplexer's turns cover a remote that starts the handshake.
    problems += _source_has(
        RTCPeerConnection, "createAnswer", 'if dtlsTransport._role == "auto":', 'media.dtls.role = "client"'
    )
    # skip_decoder: aiortc's receive() is replaced by one that does all it does but start the thread;
    # what it does must still be exactly that, and the decoder must stay optional where it is used.
    problems += _source_has(
        RTCRtpReceiver,
        "receive",
        "if not self.__started:",
        "self.__codecs[codec.payloadType] = codec",
        "self.__rtx_ssrc[encoding.rtx.ssrc] = encoding.ssrc",
        "self.__decoder_thread = threading.Thread(",
        "self.__transport._register_rtp_receiver(self, parameters)",
        "self.__rtcp_task = asyncio.ensure_future(self._run_rtcp())",
        "self.__started = True",
    )
    receive_lines = [
        line.strip()
        for line in inspect.getsource(RTCRtpReceiver.receive).splitlines()
        if line.strip() and not line.strip().startswith(("#", '"', ":"))
    ]
    if len(receive_lines) != RECEIVE_SOURCE_LINES:
        problems.append(
            f"RTCRtpReceiver.receive has {len(receive_lines)} lines, not {RECEIVE_SOURCE_LINES}: re-check "
            "skip_decoder's copy of it"
        )
    problems += _source_has(
        RTCRtpReceiver, "_handle_rtp_packet", "if encoded_frame is not None and self.__decoder_thread:"
    )
    problems += _source_has(RTCRtpReceiver, "_RTCRtpReceiver__stop_decoder", "if self.__decoder_thread:")
    # release_peer: the classes it clears are each one peer's own (a certificate and SSL context per peer
    # and DTLS transport), and a closed connection has removed its listeners and stopped its transports.
    problems += _source_has(
        RTCPeerConnection, "__init__", "self.__certificates = [RTCCertificate.generateCertificate()]"
    )
    problems += _source_has(RTCDtlsTransport, "start", "self._ssl = SSL.Connection(", "._create_ssl_context(")
    problems += _source_has(RTCCertificate, "_create_ssl_context", "ctx = SSL.Context(")
    if getattr(_SSL, "__name__", None) != "OpenSSL.SSL" or not isinstance(
        getattr(_SSL, "_VerifyHelper", None), type
    ):
        problems.append("aiortc.rtcdtlstransport.SSL is no longer pyOpenSSL's SSL module with _VerifyHelper")
    problems += _source_has(
        RTCPeerConnection, "close", "await transceiver.stop()", "self.remove_all_listeners()"
    )
    for cls, entry in ((RTCRtpSender, "send"), (RTCRtpReceiver, "receive")):
        problems += _source_has(
            cls, "__init__", "self.__rtcp_started", "self.__rtcp_exited", "self.__rtcp_task"
        )
        problems += _source_has(cls, "stop", "self.__rtcp_started.wait()", "self.__rtcp_exited.wait()")
        problems += _source_has(cls, entry, "self._run_rtcp()")
        if not inspect.iscoroutinefunction(getattr(cls, "_run_rtcp", None)):
            problems.append(f"{cls.__name__}._run_rtcp is no longer a coroutine function")
    return problems


def check_peer(pc: RTCPeerConnection) -> list[str]:
    """What no longer matches on a live peer connection (new or connected); [] when all is well."""
    problems: list[str] = []
    for transceiver in pc.getTransceivers():
        for owner in (transceiver.sender, transceiver.receiver):
            prefix = "_RTCRtpSender" if isinstance(owner, RTCRtpSender) else "_RTCRtpReceiver"
            for name in ("__rtcp_started", "__rtcp_exited"):
                if not isinstance(getattr(owner, prefix + name, None), asyncio.Event):
                    problems.append(f"{type(owner).__name__}.{name} is not an asyncio.Event")
            if not hasattr(owner, prefix + "__rtcp_task"):
                problems.append(f"{type(owner).__name__}.__rtcp_task is missing")
    try:
        dtls = dtls_transport(pc)
    except ValueError as exc:
        return [*problems, str(exc)]
    if not hasattr(dtls, "_rx_srtp") or not hasattr(dtls, "_tx_srtp"):
        problems.append("RTCDtlsTransport has no _rx_srtp/_tx_srtp")
    if not isinstance(getattr(dtls.transport, "_connection", None), aioice.ice.Connection):
        problems.append("RTCIceTransport._connection is not an aioice Connection")
    if dtls.state == "connected":
        try:
            link = srtp_link(dtls)
        except (InternalsChanged, RuntimeError) as exc:
            problems.append(str(exc))
        else:
            if not callable(getattr(link.transport, "sendto", None)):
                problems.append("the nominated pair's transport has no sendto()")
    return problems
