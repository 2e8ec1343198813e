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
import ipaddress
import logging
import re
from collections.abc import Callable

from aiortc import (
    RTCBundlePolicy,
    RTCConfiguration,
    RTCPeerConnection,
    RTCRtpTransceiver,
    RTCSessionDescription,
)
from aiortc import sdp as aiortc_sdp

from splitrelay.contract.safety import clean_text
from splitrelay.emulator.errors import ApiError, invalid_params
from splitrelay.relay.media.aiortc_internals import rtcp_silenced, set_local_ufrag
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
DIRECTIONS = ("sendrecv", "sendonly", "recvonly", "inactive")
SDP_LINE = re.compile(r"[a-z]=")
REJECTED_DROPS = ("a=candidate:", "a=end-of-candidates", "a=ssrc:", "a=ssrc-group:", "a=msid:")
"""Lines a rejected m-section of ours does not carry: it has no transport and sends nothing."""


def _mids(description: aiortc_sdp.SessionDescription | None) -> list[tuple[str, str | None]]:
    return [] if description is None else [(m.kind, m.rtp.muxId) for m in description.media]


def _check_keeps(
    offered: list[tuple[str, str | None]],
    known: list[tuple[str, str | None]],
    field: str,
    rejected: frozenset[str] = frozenset(),
) -> None:
    """A client offer carries every m-section already negotiated, first and in the same order (JSEP).

    A rejected (stopped) m-section's place may be taken by a new m-section of the same kind: JSEP 5.2.2
    lets an offerer recycle it, and Chromium does.
    """
    for kind, mid in known:
        if (kind, mid) not in offered and mid not in rejected:
            raise invalid_params(
                f"{field}: lacks the negotiated {kind} m-section mid {mid!r}; an offer must carry every "
                f"m-section this session negotiated ({[m for _, m in known]}), in order"
            )
    head = offered[: len(known)]
    if len(head) != len(known) or any(
        mine != theirs and not (theirs[1] in rejected and mine[0] == theirs[0])
        for mine, theirs in zip(head, known, strict=True)
    ):
        raise invalid_params(f"{field}: must keep the negotiated m-sections {known} first and in order")


def rejected_mids(description: aiortc_sdp.SessionDescription) -> frozenset[str]:
    """The m-sections an offer rejects: port 0 and outside the BUNDLE group (a stopped transceiver).

    Port 0 inside the group is ``a=bundle-only`` (RFC 8843 section 6), not a rejection.
    """
    bundled = set(bundle_group(description) or ())
    return frozenset(
        m.rtp.muxId for m in description.media if m.port == 0 and m.rtp.muxId and m.rtp.muxId not in bundled
    )


def bundle_group(description: aiortc_sdp.SessionDescription) -> list[str] | None:
    """The mids of the offer's BUNDLE group, in order; None when it has none."""
    group = next((g for g in description.group if g.semantic == "BUNDLE"), None)
    return None if group is None else [str(item) for item in group.items]


def reject_sections(sdp: str, rejected: frozenset[str], offered_bundle: list[str] | None) -> str:
    """Our description with each rejected m-section rejected as RFC 8843 and JSEP want.

    aiortc cannot reject an m-section: it answers every one with a live port, inactive at best, and
    bundles them all. A browser refuses that ("A BUNDLE group in answer contains a MID ... that was not
    in the offered group"). Here a rejected m-section gets port 0, ``a=inactive`` and no candidates or
    SSRCs, and the BUNDLE group holds only the offered group's mids that are not rejected (in the
    offer's order, so the offerer's BUNDLE tag stays first); with no BUNDLE group offered, none.
    """
    lines = sdp.split("\r\n")
    sections: list[list[str]] = [[]]
    for line in lines:
        if line.startswith("m="):
            sections.append([])
        sections[-1].append(line)
    session, media = sections[0], sections[1:]
    kept: list[str] = []
    for index, section in enumerate(media):
        mid = next((line[len("a=mid:") :] for line in section if line.startswith("a=mid:")), None)
        if mid is not None and mid in rejected:
            head = section[0].split(" ")
            head[1] = "0"
            body = [
                "a=inactive" if line[2:] in DIRECTIONS else line
                for line in section[1:]
                if not line.startswith(REJECTED_DROPS)
            ]
            media[index] = [" ".join(head), *body]
        elif mid is not None:
            kept.append(mid)
    if offered_bundle is None:
        group: list[str] = []
    else:
        group = [mid for mid in offered_bundle if mid in kept]
    out: list[str] = []
    for line in session:
        if line.startswith("a=group:BUNDLE"):
            if group:
                out.append("a=group:BUNDLE " + " ".join(group))
            continue
        out.append(line)
    for section in media:
        out.extend(section)
    return "\r\n".join(out)


def _check_lines(sdp: str, field: str) -> None:
    """Every line is ``<type>=<value>`` with a lowercase type letter (RFC 8866 section 5).

    aiortc's parser skips a line it does not know, so a mangled ``M=audio`` would silently drop an
    m-section and leave a BUNDLE group naming a mid that no longer exists.
    """
    for number, line in enumerate(sdp.splitlines(), 1):
        if line and not SDP_LINE.match(line):
            raise invalid_params(
                f"{field}: line {number} is not an SDP line <type>=<value>: {clean_text(line, 40)!r}"
            )


def _check_address(where: str, host: str | None) -> None:
    """A ``c=`` address aiortc would otherwise store, then fail on each time it re-serialises the SDP."""
    if host is None:
        return
    try:
        ipaddress.ip_address(host)
    except ValueError:
        raise invalid_params(
            f"{where}: c= address {clean_text(host, 60)!r} is not an IPv4 or IPv6 address"
        ) from None


def parse_description(sdp: str, field: str) -> aiortc_sdp.SessionDescription:
    """Parse a client's SDP and check what aiortc would otherwise fail on later, mid-way (a 500)."""
    _check_lines(sdp, field)
    try:
        description = aiortc_sdp.SessionDescription.parse(sdp)
    except Exception as exc:  # aiortc's parser raises anything from AssertionError to ValueError
        detail = clean_text(str(exc), 80)
        raise invalid_params(
            f"{field}: not a parseable SDP ({type(exc).__name__}{': ' + detail if detail else ''})"
        ) from None
    if not description.media:
        raise invalid_params(f"{field}: has no m-section")
    _check_address(f"{field}: session level", description.host)
    mids: set[str] = set()
    for index, media in enumerate(description.media):
        where = f"{field}: m-section {index}"
        if media.kind not in ALLOWED_KINDS:
            raise invalid_params(f"{where} is {media.kind!r}; the emulator carries audio only (no video)")
        mid = media.rtp.muxId
        if not mid:
            raise invalid_params(f"{where} has no a=mid")
        if mid in mids:
            raise invalid_params(
                f"{where} repeats a=mid:{clean_text(mid, 32)} (each m-section needs its own)"
            )
        mids.add(mid)
        _check_address(where, media.host)
        if media.ice is None or not media.ice.usernameFragment or not media.ice.password:
            raise invalid_params(f"{where} has no a=ice-ufrag/a=ice-pwd")
        if media.dtls is None or not media.dtls.fingerprints:
            raise invalid_params(f"{where} has no a=fingerprint")
        if media.kind == "audio":
            if media.direction not in DIRECTIONS:
                raise invalid_params(
                    f"{where} has no direction attribute (a=sendrecv, sendonly, recvonly or inactive)"
                )
            if not media.rtcp_mux:
                raise invalid_params(f"{where} has no a=rtcp-mux (required)")
            if not any(c.mimeType.lower() == "audio/opus" for c in media.rtp.codecs):
                raise invalid_params(f"{where} offers no Opus codec")
    for group in description.group:
        if group.semantic != "BUNDLE":
            continue
        items = [str(item) for item in group.items]
        unknown = [item for item in items if item not in mids]
        if unknown or len(set(items)) != len(items):
            raise invalid_params(
                f"{field}: a=group:BUNDLE {clean_text(' '.join(items), 80)} must name each m-section's "
                f"mid at most once (m-sections: {sorted(mids)})"
            )
    if not any(m.kind == "audio" for m in description.media):
        raise invalid_params(f"{field}: no audio m-section (video and data channels are not emulated)")
    try:
        str(description)  # aiortc re-serialises a remote description on every read of it
    except Exception as exc:
        raise invalid_params(
            f"{field}: not a valid SDP ({type(exc).__name__}: {clean_text(str(exc), 80)})"
        ) from None
    return description


class SessionPeer:
    """One session's peer connection; see the module docstring."""

    def __init__(
        self,
        *,
        candidates: CandidatePolicy,
        ufrag_label: str = "",
        fast_path_config: FastPathConfig,
        on_packet: OnPacket,
        on_attached: Callable[[SrtpFastPath | None], None],
        on_state: Callable[[str], None],
    ) -> None:
        # No ICE servers: without the list aiortc falls back to stun.l.google.com, so every session looked
        # the name up (in the loop's 6-thread pool) while gathering; a resolver that drops a few of a
        # burst's queries held every later answer 5 s (glibc's retry). An SFU gathers no server-reflexive
        # candidates anyway: its addresses are its own.
        self.pc = RTCPeerConnection(RTCConfiguration(iceServers=[], bundlePolicy=RTCBundlePolicy.MAX_BUNDLE))
        self.fast_path: SrtpFastPath | None = None
        self.connected = asyncio.Event()
        self._candidates = candidates
        self._ufrag_label = ufrag_label
        self.ufrag: str | None = None
        """The ICE ufrag minted on the shared media socket (``EmulatorConfig.media_port``), if any."""
        self._fast_path_config = fast_path_config
        self._on_packet = on_packet
        self._on_attached = on_attached
        self._on_state = on_state
        self._refreshing = False
        self._closed = False
        self.agreed: list[tuple[str, str | None]] = []
        """(kind, mid) of each m-section of the last completed offer/answer, in order."""
        self.rejected: frozenset[str] = frozenset()
        """Mids of m-sections rejected (port 0) in the last offer: answered rejected, offered rejected."""
        self._offered_bundle: list[str] | None = None
        self.bundle_tag: str | None = None
        """The first mid of the BUNDLE group last agreed: the m-section whose transport carries all."""
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
        """The live transceivers by mid (a rejected m-section's is not: it can carry nothing again)."""
        return {
            t.mid: t for t in self.pc.getTransceivers() if t.mid is not None and t.mid not in self.rejected
        }

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
        _check_keeps(_mids(description), self.agreed, field, self.rejected)
        return description

    def check_resumes(self, description: aiortc_sdp.SessionDescription, field: str) -> None:
        """A reconnecting client's offer (checked by the fresh peer) carries this peer's m-sections.

        Called on the failed peer, whatever its signaling state: an SFU offer left unanswered when the
        connection failed does not count, only what both sides had agreed on.
        """
        _check_keeps(_mids(description), self.agreed, field, self.rejected)

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
        """Apply a checked client offer; returns the transceivers it created (recvonly, RTCP silenced).

        m-sections the offer rejects (port 0) are kept inactive and answered rejected; a rejected
        m-section whose place a new one took (recycled) leaves aiortc altogether.
        """
        description = aiortc_sdp.SessionDescription.parse(sdp)
        offered = {mid for _, mid in _mids(description)}
        rejected = rejected_mids(description)
        await self._drop_recycled(offered)
        before = set(map(id, self.pc.getTransceivers()))
        await self._remote(sdp, "offer")  # max-bundle: aiortc gives every m-section one transport
        self._silence_new()  # before aiortc's connect task runs: it starts RTCP on new transceivers
        self.rejected = rejected
        self._offered_bundle = bundle_group(description)
        return [t for t in self.pc.getTransceivers() if id(t) not in before and t.mid not in self.rejected]

    def moves_bundle(self, description: aiortc_sdp.SessionDescription) -> bool:
        """The offer's BUNDLE group has another tag (first mid) than the group last agreed.

        That happens when the tag's m-section is stopped, or a new one recycles an earlier place.
        Chromium then moves the group onto a new transport of its own (new ICE checks, a new DTLS
        handshake: seen with Chromium against the emulator); aiortc cannot start a second DTLS
        association on a transport, so the emulator answers such an offer on a fresh peer, as it
        answers a reconnect. A client that kept its transport sees an ICE and DTLS restart instead.
        """
        group = bundle_group(description)
        if self.bundle_tag is None or not group:
            return False
        return group[0] != self.bundle_tag

    async def _drop_recycled(self, offered: set[str | None]) -> None:
        """Remove the transceivers of rejected m-sections that a new offer no longer carries.

        aiortc finds a transceiver by m-line index when it sets a description, so a stopped one left at
        a recycled index would be given the new mid. aiortc has no API for removing a transceiver: this
        takes it out of the connection's private list (aiortc is pinned; tests cover it).
        """
        gone = [t for t in self.pc.getTransceivers() if t.mid in self.rejected and t.mid not in offered]
        if not gone:
            return
        transceivers = getattr(self.pc, "_RTCPeerConnection__transceivers", None)
        if not isinstance(transceivers, list):
            raise RuntimeError("aiortc internals changed: RTCPeerConnection has no __transceivers list")
        for transceiver in gone:
            await transceiver.stop()
            transceivers.remove(transceiver)

    async def create_answer(self) -> str:
        for mid, transceiver in self._all_by_mid().items():
            if mid in self.rejected:
                transceiver.direction = "inactive"
        try:
            answer = await self.pc.createAnswer()
        except (ValueError, LookupError, TypeError, AttributeError) as exc:  # what parse_description missed
            detail = f"{type(exc).__name__}: {clean_text(str(exc), 80)}"
            raise invalid_params(f"sessionDescription: cannot answer this offer ({detail})") from None
        await self._local(answer)
        self._agree()
        return reject_sections(str(self.pc.localDescription.sdp), self.rejected, self._offered_bundle)

    async def create_offer(self) -> str:
        """Our offer; m-sections the client rejected stay rejected in it (JSEP 5.2.2)."""
        offer = await self.pc.createOffer()
        await self._local(offer)
        sdp = str(self.pc.localDescription.sdp)
        ours = [str(mid) for _, mid in _mids(aiortc_sdp.SessionDescription.parse(sdp))]
        return reject_sections(sdp, self.rejected, ours)

    def _all_by_mid(self) -> dict[str, RTCRtpTransceiver]:
        return {t.mid: t for t in self.pc.getTransceivers() if t.mid is not None}

    async def apply_answer(self, sdp: str) -> None:
        await self._remote(sdp, "answer")
        self._agree()

    def _agree(self) -> None:
        """An offer/answer exchange completed: its m-sections are what a later offer must keep."""
        local = aiortc_sdp.SessionDescription.parse(self.pc.localDescription.sdp)
        self.agreed = _mids(local)
        self.bundle_tag = next((mid for _, mid in self.agreed if mid not in self.rejected), None)

    async def _remote(self, sdp: str, kind: str) -> None:
        try:
            await self.pc.setRemoteDescription(RTCSessionDescription(sdp, kind))
        except (ValueError, LookupError, TypeError) as exc:
            raise invalid_params(f"sessionDescription: aiortc refused the {kind}: {exc}") from None
        except Exception as exc:  # aiortc's InvalidStateError/OperationError
            raise ApiError(400, "invalid_params", f"sessionDescription: {type(exc).__name__}") from None

    async def _local(self, description: RTCSessionDescription) -> None:
        port = self._candidates.shared_port
        if port is not None and self.ufrag is None:
            # On the shared socket the demultiplexer routes by the ufrag it minted: set it before the
            # first description gathers (max-bundle: the one ICE connection of every transceiver).
            ufrag = port.mint_ufrag(self._ufrag_label)
            try:
                set_local_ufrag(self.pc, ufrag)
            except ValueError as exc:  # no transceiver yet: nothing to gather for
                raise invalid_params(f"sessionDescription: {exc}") from None
            self.ufrag = ufrag
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
        try:
            await self.pc.close()
        except Exception:  # a session always ends, even if aiortc was left half-way by a bad description
            logger.warning("peer connection did not close cleanly", exc_info=True)
