"""An aiortc peer connection set up for one voice call carried by the SRTP fast path.

One sendrecv audio transceiver, Opus only (48 kHz, 2 channels, with our fmtp), the RFC 6464 audio level
extension, and a placeholder outbound track that never yields a frame: media moves on the fast path,
aiortc only does ICE and DTLS.
"""

from __future__ import annotations

import asyncio
import contextlib
import ipaddress
from collections.abc import Iterator, Mapping
from dataclasses import dataclass, field
from types import MappingProxyType
from typing import Any

from aiortc import (
    MediaStreamTrack,
    RTCConfiguration,
    RTCIceServer,
    RTCPeerConnection,
    RTCRtpCodecCapability,
    RTCRtpTransceiver,
    RTCSessionDescription,
)
from aiortc.mediastreams import MediaStreamError
from av.frame import Frame
from av.packet import Packet

from splitrelay.relay.media import aiortc_internals
from splitrelay.relay.media.demux import DemuxLimits
from splitrelay.relay.media.sdp import (
    StreamParams,
    advertise_public_address,
    check_bundle_groups,
    check_fmtp,
    negotiated_audio_streams,
    parse_media_sections,
    set_codec_fmtp,
)
from splitrelay.relay.media.shared_port import SharedUdpPort

OPUS = RTCRtpCodecCapability(mimeType="audio/opus", clockRate=48000, channels=2)
DEFAULT_OPUS_FMTP: Mapping[str, int | str] = MappingProxyType({"minptime": 10, "useinbandfec": 1})


@dataclass(frozen=True)
class CandidatePolicy:
    """Which local addresses and UDP ports ICE host candidates use.

    ``addresses=None`` keeps aioice's own choice (every interface except loopback); a tuple gathers on
    exactly those addresses, loopback included. ``port_range`` binds inside [low, high]. ``shared_port``
    binds nothing: every peer built with it gathers one host candidate on that one socket, and VoicePeer
    mints its ICE ufrag there so the demultiplexer can route it (relay/media/demux.py). A port bound to a
    specific address gathers on that address only (``addresses``, if given, must include it).
    """

    addresses: tuple[str, ...] | None = None
    port_range: tuple[int, int] | None = None
    shared_port: SharedUdpPort | None = None

    def __post_init__(self) -> None:
        if self.addresses is not None:
            if not self.addresses:
                raise ValueError(
                    "candidates.addresses: give at least one address, or None for all interfaces"
                )
            for address in self.addresses:
                try:
                    ipaddress.ip_address(address)
                except ValueError:
                    raise ValueError(
                        f"candidates.addresses: {address!r} is not an IPv4/IPv6 address literal"
                    ) from None
        if self.port_range is not None:
            low, high = self.port_range
            if not 1024 <= low <= high <= 65535:
                raise ValueError(
                    f"candidates.port_range must satisfy 1024 <= low <= high <= 65535, got {low}-{high}"
                )
        if self.shared_port is not None:
            if self.port_range is not None:
                raise ValueError("candidates: give port_range or shared_port, not both")
            port = self.shared_port
            if self.addresses is not None and not any(port.candidate_host(a) for a in self.addresses):
                raise ValueError(
                    f"candidates.addresses {self.addresses} do not include the shared port's {port.host}"
                )


LOOPBACK = CandidatePolicy(addresses=("127.0.0.1",))


async def open_shared_port(
    policy: CandidatePolicy, base_port: int, *, worker: int = 0, limits: DemuxLimits | None = None
) -> tuple[CandidatePolicy, SharedUdpPort]:
    """Open worker ``worker``'s shared UDP port (``base_port + worker``) and the policy that uses it.

    The socket binds the policy's one address (``addresses=None``: the IPv4 wildcard, one candidate per
    call on the first address aioice gathers); the port range, if any, is dropped. Close the port after
    the calls (``await port.close()``). What a relay process does at start with one port per worker.
    """
    if policy.addresses is not None and len(policy.addresses) != 1:
        raise ValueError(
            f"shared port: give exactly one candidate address to bind (got {policy.addresses}); "
            "one socket cannot serve several host candidates"
        )
    if not 0 < base_port + worker <= 65535 or base_port < 1024:
        raise ValueError(f"shared port: base port {base_port} + worker {worker} is not a port >= 1024")
    host = policy.addresses[0] if policy.addresses is not None else "0.0.0.0"
    port = await SharedUdpPort.open(host, base_port + worker, worker=worker, limits=limits)
    return CandidatePolicy(addresses=policy.addresses, shared_port=port), port


@contextlib.contextmanager
def candidate_policy(policy: CandidatePolicy) -> Iterator[None]:
    """Apply ``policy`` to the candidates any aiortc peer gathers in this block (setLocalDescription)."""
    with aiortc_internals.gathering_scope(policy.addresses, policy.port_range, policy.shared_port):
        yield


@dataclass(frozen=True)
class VoicePeerConfig:
    ice_servers: tuple[RTCIceServer, ...] = ()
    candidates: CandidatePolicy = CandidatePolicy()
    opus_fmtp: Mapping[str, int | str] = field(default_factory=lambda: DEFAULT_OPUS_FMTP)
    own_rtcp: bool = True
    """Silence aiortc's RTCP so the fast path's reports are the only ones on our SSRC."""
    public_address: str | None = None
    """Public IPv4 that maps 1:1 onto this host (an Elastic IP): advertised as a srflx candidate."""
    decoder_thread: bool = False
    """Start aiortc's per-receiver decoder thread. Off: the fast path takes every packet, so the thread
    would only idle (one OS thread per call, joined on the event loop at close)."""

    def __post_init__(self) -> None:
        if self.public_address is not None:
            advertise_public_address("", self.public_address)  # validates the address


class PlaceholderAudioTrack(MediaStreamTrack):
    """Outbound track that never yields a frame: it gives the SDP an msid while aiortc sends nothing."""

    kind = "audio"

    def __init__(self) -> None:
        super().__init__()
        self._ended = asyncio.Event()

    async def recv(self) -> Frame | Packet[Any]:
        await self._ended.wait()
        raise MediaStreamError

    def stop(self) -> None:
        self._ended.set()
        super().stop()


class VoicePeer:
    """One voice call's RTCPeerConnection: offer/answer helpers, connection wait, negotiated parameters."""

    def __init__(self, config: VoicePeerConfig | None = None, *, ufrag_label: str = "") -> None:
        """``ufrag_label`` (a call id) goes into the ICE ufrag a shared port mints, for captures and logs."""
        self.config = config or VoicePeerConfig()
        check_fmtp(self.config.opus_fmtp)
        self.pc = RTCPeerConnection(RTCConfiguration(iceServers=list(self.config.ice_servers)))
        self.track = PlaceholderAudioTrack()
        self.transceiver: RTCRtpTransceiver = self.pc.addTransceiver(self.track, direction="sendrecv")
        self.transceiver.setCodecPreferences([OPUS])
        if self.config.own_rtcp:
            aiortc_internals.silence_rtcp(self.transceiver)
        if not self.config.decoder_thread:
            aiortc_internals.skip_decoder(self.transceiver.receiver)
        self.ufrag: str | None = None
        """Our ICE ufrag when minted by a shared port (the demultiplexer's key for this call)."""
        port = self.config.candidates.shared_port
        if port is not None:
            self.ufrag = port.mint_ufrag(ufrag_label)
            aiortc_internals.set_local_ufrag(self.pc, self.ufrag)

    async def create_offer(self) -> str:
        """Create and apply our offer (gathering candidates under the policy); return its SDP."""
        offer = await self.pc.createOffer()
        await self._set_local(
            RTCSessionDescription(set_codec_fmtp(offer.sdp, "opus", self.config.opus_fmtp), "offer")
        )
        return self.local_sdp()

    async def accept_offer(self, sdp: str) -> str:
        """Apply the remote offer, create and apply our answer; return the answer SDP."""
        sections = parse_media_sections(sdp)
        kinds = [m.kind for m in sections]
        if kinds != ["audio"]:
            raise ValueError(f"offer: expected exactly one audio m-section, got {kinds}")
        check_bundle_groups(sdp, sections)
        await self.pc.setRemoteDescription(RTCSessionDescription(sdp, "offer"))
        answer = await self.pc.createAnswer()
        await self._set_local(
            RTCSessionDescription(set_codec_fmtp(answer.sdp, "opus", self.config.opus_fmtp), "answer")
        )
        return self.local_sdp()

    def local_sdp(self) -> str:
        """Our description as the peer should see it (plus the public address, when configured)."""
        sdp = str(self.pc.localDescription.sdp)
        if self.config.public_address is not None:
            sdp = advertise_public_address(sdp, self.config.public_address)
        return sdp

    async def accept_answer(self, sdp: str) -> None:
        kinds = [m.kind for m in parse_media_sections(sdp)]
        if kinds != ["audio"]:
            raise ValueError(f"answer: expected exactly one audio m-section, got {kinds}")
        await self.pc.setRemoteDescription(RTCSessionDescription(sdp, "answer"))

    async def _set_local(self, description: RTCSessionDescription) -> None:
        with candidate_policy(self.config.candidates):
            await self.pc.setLocalDescription(description)
        if "\na=candidate:" not in self.pc.localDescription.sdp:
            policy = self.config.candidates
            shared = policy.shared_port
            raise ConnectionError(
                f"no ICE candidate gathered (candidates.addresses={policy.addresses}, "
                f"candidates.port_range={policy.port_range}, "
                f"candidates.shared_port={shared.address if shared is not None else None}, "
                f"{len(self.config.ice_servers)} ICE servers)"
            )

    async def wait_connected(self, *, within: float = 10.0) -> None:
        await wait_connected(self.pc, within=within)

    def stream_params(self) -> StreamParams:
        """The negotiated parameters of the call's audio stream (after offer/answer)."""
        (params,) = negotiated_streams(self.pc)
        return params

    async def close(self) -> None:
        if "pc" in vars(self):  # a released peer is closed already
            await self.pc.close()

    def release(self) -> int:
        """After ``close()``: break the cycles aiortc ties a closed peer into, so reference counting frees
        it (``aiortc_internals.release_peer``); → how many objects were cleared. Only ``close()`` (which
        does nothing) works afterwards."""
        cleared = aiortc_internals.release_peer(self.pc)
        vars(self.track).clear()  # our placeholder track: an event emitter with its listeners
        config = self.config
        vars(self).clear()
        self.config = config
        return cleared + 1


async def wait_connected(pc: RTCPeerConnection, *, within: float = 10.0) -> None:
    """Wait until ICE and DTLS are up; raise ConnectionError on failure, TimeoutError after ``within`` s."""
    if not 0 < within <= 300:
        raise ValueError(f"within must be in (0, 300] seconds, got {within}")
    done: asyncio.Future[None] = asyncio.get_running_loop().create_future()

    def check() -> None:
        if done.done():
            return
        if pc.connectionState == "connected":
            done.set_result(None)
        elif pc.connectionState in ("failed", "closed"):
            done.set_exception(ConnectionError(f"peer connection {pc.connectionState}"))

    pc.on("connectionstatechange", check)
    try:
        check()
        async with asyncio.timeout(within):
            await done
    except TimeoutError:
        raise TimeoutError(f"peer connection still {pc.connectionState!r} after {within} s") from None
    finally:
        pc.remove_listener("connectionstatechange", check)


def negotiated_streams(pc: RTCPeerConnection) -> list[StreamParams]:
    """Audio stream parameters of a negotiated ``pc``, read from its local and remote descriptions."""
    local, remote = pc.localDescription, pc.remoteDescription
    if local is None or remote is None or pc.signalingState != "stable":
        raise RuntimeError(f"peer connection is not negotiated (signaling state {pc.signalingState!r})")
    return negotiated_audio_streams(local.sdp, remote.sdp, local_is_answer=local.type == "answer")


def silence_aiortc_rtcp(transceiver: RTCRtpTransceiver) -> None:
    """For peers not built by VoicePeer (the emulator): let the fast path own RTCP on this transceiver."""
    aiortc_internals.silence_rtcp(transceiver)
