"""The SFU side of one session: an aiortc RTCPeerConnection (one BUNDLE transport) and its SRTP fast path.

aiortc does ICE, DTLS and SDP; media moves on :class:`splitrelay.relay.media.srtp_fastpath.SrtpFastPath`,
attached
once the connection is up and given the new stream set in place after each negotiation.
Descriptions from clients are checked here before aiortc sees them, so a bad SDP is refused with a
clear error and leaves the connection as it was. aiortc has no ICE restart: a session whose connection
failed is resumed on a fresh SessionPeer (see ``check_resumes`` and the emulator's reconnect).
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Callable

from aiortc import (
    RTCBundlePolicy,
    RTCConfiguration,
    RTCPeerConnection,
    RTCRtpTransceiver,
    RTCSessionDescription,
)
from aiortc import sdp as aiortc_sdp

from splitrelay.emulator.errors import ApiError, invalid_params
from splitrelay.relay.media.aiortc_internals import rtcp_silenced
from splitrelay.relay.media.peer import (
    OPUS,
    CandidatePolicy,
    PlaceholderAudioTrack,
    candidate_policy,
    silence_aiortc_rtcp,
)
from splitrelay.relay.media.peer import negotiated_streams as negotiated_streams_of
from splitrelay.relay.media.sdp import StreamParams
from splitrelay.relay.media.srtp_fastpath import FastPathConfig, OnPacket, SrtpFastPath

logger = logging.getLogger("splitrelay.sfu_emulator.peer")

SENDING = ("sendrecv", "sendonly")
ALLOWED_KINDS = ("audio", "application")


def _mids(description: aiortc_sdp.SessionDescription | None) -> list[tuple[str, str | None]]:
    return [] if description is None else [(m.kind, m.rtp.muxId) for m in description.media]


def _check_keeps(
    offered: list[tuple[str, str | None]], known: list[tuple[str, str | None]], field: str
) -> None:
    """A client offer carries every m-section already negotiated, first and in the same order (JSEP)."""
    for kind, mid in known:
        if (kind, mid) not in offered:
            raise invalid_params(
                f"{field}: lacks the negotiated {kind} m-section mid {mid!r}; an offer must carry every "
                f"m-section this session negotiated ({[m for _, m in known]}), in order"
            )
    if offered[: len(known)] != known:
        raise invalid_params(f"{field}: must keep the negotiated m-sections {known} first and in order")


def parse_description(sdp: str, field: str) -> aiortc_sdp.SessionDescription:
    """Parse a client's SDP and check what aiortc would otherwise fail on later, mid-way."""
    try:
        description = aiortc_sdp.SessionDescription.parse(sdp)
    except Exception:  # aiortc's parser raises anything from IndexError to ValueError on bad input
        raise invalid_params(f"{field}: not a parseable SDP") from None
    if not description.media:
        raise invalid_params(f"{field}: has no m-section")
    for index, media in enumerate(description.media):
        where = f"{field}: m-section {index}"
        if media.kind not in ALLOWED_KINDS:
            raise invalid_params(f"{where} is {media.kind!r}; the emulator carries audio only (no video)")
        if not media.rtp.muxId:
            raise invalid_params(f"{where} has no a=mid")
        if media.ice is None or not media.ice.usernameFragment or not media.ice.password:
            raise invalid_params(f"{where} has no a=ice-ufrag/a=ice-pwd")
        if media.dtls is None or not media.dtls.fingerprints:
            raise invalid_params(f"{where} has no a=fingerprint")
        if media.kind == "audio":
            if not media.rtcp_mux:
                raise invalid_params(f"{where} has no a=rtcp-mux (required)")
            if not any(c.mimeType.lower() == "audio/opus" for c in media.rtp.codecs):
                raise invalid_params(f"{where} offers no Opus codec")
    if not any(m.kind == "audio" for m in description.media):
        raise invalid_params(f"{field}: no audio m-section (video and data channels are not emulated)")
    return description


class SessionPeer:
    """One session's peer connection; see the module docstring."""

    def __init__(
        self,
        *,
        candidates: CandidatePolicy,
        fast_path_config: FastPathConfig,
        on_packet: OnPacket,
        on_attached: Callable[[SrtpFastPath | None], None],
        on_state: Callable[[str], None],
    ) -> None:
        self.pc = RTCPeerConnection(RTCConfiguration(bundlePolicy=RTCBundlePolicy.MAX_BUNDLE))
        self.fast_path: SrtpFastPath | None = None
        self.connected = asyncio.Event()
        self._candidates = candidates
        self._fast_path_config = fast_path_config
        self._on_packet = on_packet
        self._on_attached = on_attached
        self._on_state = on_state
        self._refreshing = False
        self._closed = False
        self.agreed: list[tuple[str, str | None]] = []
        """(kind, mid) of each m-section of the last completed offer/answer, in order."""
        self._pending_attach: asyncio.Handle | None = None
        self.pc.on("connectionstatechange", self._state_changed)

    # --- state -----------------------------------------------------------------------------------

    @property
    def state(self) -> str:
        return str(self.pc.connectionState)

    @property
    def signaling(self) -> str:
        return str(self.pc.signalingState)

    @property
    def negotiated_once(self) -> bool:
        return self.pc.remoteDescription is not None and self.pc.localDescription is not None

    def _state_changed(self) -> None:
        state = self.state
        if state == "connected":
            self.connected.set()
            if self.fast_path is None and self._pending_attach is None and not self._closed:
                # Outside aiortc's own call stack: its DTLS state is final once this callback returns.
                self._pending_attach = asyncio.get_running_loop().call_soon(self._attach_if_ready)
        else:
            self.connected.clear()
        self._on_state(state)

    def _attach_if_ready(self) -> None:
        self._pending_attach = None
        if self._closed or self._refreshing or self.fast_path is not None:
            return
        if self.state != "connected" or self.signaling != "stable":
            return  # the negotiation in progress attaches when it completes
        self._attach()

    def _attach(self) -> None:
        try:
            streams = negotiated_streams_of(self.pc)
            if not streams:
                return
            self.fast_path = SrtpFastPath.attach(self.pc, self._on_packet, self._fast_path_config)
        except (ValueError, RuntimeError) as exc:
            logger.warning("fast path not attached: %s", exc)
            return
        self._on_attached(self.fast_path)

    async def refresh_fast_path(self) -> None:
        """After a negotiation: take the new stream set onto a fresh fast path (if connected)."""
        if self._closed:
            return
        self._refreshing = True
        try:
            ready = self.state == "connected" and self.signaling == "stable"
            streams = self.negotiated_streams() if ready else []
            if self.fast_path is not None and streams:
                self.fast_path.update_streams(streams)  # in place: no packet lost to a re-attach
                self._on_attached(self.fast_path)
                return
            old, self.fast_path = self.fast_path, None
            if old is not None:
                self._on_attached(None)
                await old.close()
            if ready and not self._closed:
                self._attach()
        finally:
            self._refreshing = False

    def negotiated_streams(self) -> list[StreamParams]:
        if not self.negotiated_once or self.signaling != "stable":
            return []
        try:
            return negotiated_streams_of(self.pc)
        except (ValueError, RuntimeError):
            return []

    # --- transceivers ----------------------------------------------------------------------------

    def transceivers(self) -> dict[str, RTCRtpTransceiver]:
        return {t.mid: t for t in self.pc.getTransceivers() if t.mid is not None}

    def add_transceiver(self, direction: str) -> RTCRtpTransceiver:
        """A new SFU-side audio transceiver (Opus only, aiortc's RTCP silenced), negotiated by our offer."""
        track = PlaceholderAudioTrack() if direction in SENDING else None
        transceiver = self.pc.addTransceiver(track or "audio", direction=direction)
        transceiver.setCodecPreferences([OPUS])
        silence_aiortc_rtcp(transceiver)
        return transceiver

    @staticmethod
    def set_direction(transceiver: RTCRtpTransceiver, direction: str) -> None:
        if direction in SENDING and transceiver.sender.track is None:
            transceiver.sender.replaceTrack(PlaceholderAudioTrack())
        transceiver.direction = direction

    def _silence_new(self) -> None:
        for transceiver in self.pc.getTransceivers():
            if not rtcp_silenced(transceiver):
                silence_aiortc_rtcp(transceiver)

    # --- negotiation -----------------------------------------------------------------------------

    def check_offer(self, sdp: str, field: str) -> aiortc_sdp.SessionDescription:
        """A client offer: parseable, and it keeps every m-section already negotiated, in order."""
        if self.signaling != "stable":
            raise invalid_params(f"{field}: the SFU's offer is not answered yet (PUT renegotiate first)")
        description = parse_description(sdp, field)
        _check_keeps(_mids(description), self.agreed, field)
        return description

    def check_resumes(self, description: aiortc_sdp.SessionDescription, field: str) -> None:
        """A reconnecting client's offer (checked by the fresh peer) carries this peer's m-sections.

        Called on the failed peer, whatever its signaling state: an SFU offer left unanswered when the
        connection failed does not count, only what both sides had agreed on.
        """
        _check_keeps(_mids(description), self.agreed, field)

    def check_answer(self, sdp: str, field: str) -> aiortc_sdp.SessionDescription:
        """A client answer to our pending offer: same m-sections, and a DTLS role of its own."""
        if self.signaling != "have-local-offer":
            raise invalid_params(f"{field}: there is no SFU offer to answer")
        description = parse_description(sdp, field)
        offer = aiortc_sdp.SessionDescription.parse(self.pc.localDescription.sdp)
        if _mids(description) != _mids(offer):
            raise invalid_params(f"{field}: m-sections {_mids(description)} do not match the offer's")
        for index, media in enumerate(description.media):
            if media.dtls is None or media.dtls.role not in ("client", "server"):
                raise invalid_params(f"{field}: m-section {index} needs a=setup:active or passive")
        return description

    async def apply_offer(self, sdp: str) -> list[RTCRtpTransceiver]:
        """Apply a checked client offer; returns the transceivers it created (recvonly, RTCP silenced)."""
        before = set(map(id, self.pc.getTransceivers()))
        await self._remote(sdp, "offer")
        self._silence_new()  # before aiortc's connect task runs: it starts RTCP on new transceivers
        return [t for t in self.pc.getTransceivers() if id(t) not in before]

    async def create_answer(self) -> str:
        answer = await self.pc.createAnswer()
        await self._local(answer)
        self._agree()
        return str(self.pc.localDescription.sdp)

    async def create_offer(self) -> str:
        offer = await self.pc.createOffer()
        await self._local(offer)
        return str(self.pc.localDescription.sdp)

    async def apply_answer(self, sdp: str) -> None:
        await self._remote(sdp, "answer")
        self._agree()

    def _agree(self) -> None:
        """An offer/answer exchange completed: its m-sections are what a later offer must keep."""
        self.agreed = _mids(aiortc_sdp.SessionDescription.parse(self.pc.localDescription.sdp))

    async def _remote(self, sdp: str, kind: str) -> None:
        try:
            await self.pc.setRemoteDescription(RTCSessionDescription(sdp, kind))
        except (ValueError, LookupError, TypeError) as exc:
            raise invalid_params(f"sessionDescription: aiortc refused the {kind}: {exc}") from None
        except Exception as exc:  # aiortc's InvalidStateError/OperationError
            raise ApiError(400, "invalid_params", f"sessionDescription: {type(exc).__name__}") from None

    async def _local(self, description: RTCSessionDescription) -> None:
        with candidate_policy(self._candidates):
            await self.pc.setLocalDescription(description)

    # --- end -------------------------------------------------------------------------------------

    async def close(self) -> None:
        """Say BYE on every stream we sent, stop the fast path, close the connection. Idempotent."""
        if self._closed:
            return
        self._closed = True
        if self._pending_attach is not None:
            self._pending_attach.cancel()
            self._pending_attach = None
        fast_path, self.fast_path = self.fast_path, None
        if fast_path is not None:
            self._on_attached(None)
            fast_path.send_rtcp(bye=True)
            await fast_path.close()
        await self.pc.close()
