"""A participant of the emulated SFU: an aiortc peer on the fast path, joined through our own SfuClient.

Used by the emulator's integration tests and its benchmark (and handy for trying the emulator by hand):
it publishes and pulls tracks with the same API calls a Worker makes, and sends or receives encoded
Opus on :class:`splitrelay.relay.media.srtp_fastpath.SrtpFastPath`, the path the relay uses.
"""

from __future__ import annotations

from collections.abc import Callable

from splitrelay.contract.sfu import SessionDescription, TrackObject, TracksRequest, TracksResponse
from splitrelay.emulator.peer import SessionPeer
from splitrelay.relay.media.peer import LOOPBACK, CandidatePolicy, wait_connected
from splitrelay.relay.media.rtp import RtpPacket
from splitrelay.relay.media.srtp_fastpath import FastPathConfig, OutboundStream, SrtpFastPath
from splitrelay.relay.sfu_client import SfuClient


class Participant:
    """One client session: ``open``, ``publish``/``pull``, send with ``outbound(mid)``, ``close``."""

    def __init__(
        self,
        sfu: SfuClient,
        *,
        on_packet: Callable[[RtpPacket], object] | None = None,
        candidates: CandidatePolicy = LOOPBACK,
        fast_path_config: FastPathConfig | None = None,
    ) -> None:
        self.sfu = sfu
        self.received: list[RtpPacket] = []
        self._on_packet = on_packet or self.received.append
        self.peer = SessionPeer(
            candidates=candidates,
            fast_path_config=fast_path_config or FastPathConfig(rtcp_interval=0.5, bye_on_close=False),
            on_packet=self._packet,
            on_attached=lambda _fast_path: None,
            on_state=lambda _state: None,
        )
        self.session_id = ""

    def _packet(self, packet: RtpPacket) -> None:
        self._on_packet(packet)

    async def open(self, *, thirdparty: bool = False) -> str:
        response = await self.sfu.new_session(thirdparty=thirdparty)
        self.session_id = response.session_id
        return self.session_id

    async def publish(self, track_name: str, *, bidirectional: bool = False) -> str:
        """Push a new track with our offer (sendrecv when ``bidirectional``); returns its mid."""
        transceiver = self.peer.add_transceiver("sendrecv" if bidirectional else "sendonly")
        offer = await self.peer.create_offer()
        assert transceiver.mid is not None
        response = await self.sfu.new_tracks(
            self.session_id,
            TracksRequest(
                tracks=(
                    TrackObject.local(
                        track_name,
                        mid=transceiver.mid,
                        kind="audio",
                        bidirectional_media_stream=bidirectional or None,
                    ),
                ),
                session_description=SessionDescription.offer(offer),
            ),
        )
        response.raise_for_item_errors()
        if response.session_description is None:
            raise RuntimeError("tracks/new with an offer returned no answer")
        await self.peer.apply_answer(response.session_description.sdp)
        await self.peer.refresh_fast_path()
        return transceiver.mid

    async def publish_sfu_offer(self, track_name: str, *, bidirectional: bool = False) -> str:
        """Push a track the SFU offers for (``kind`` audio, no offer of ours): the thirdparty flow."""
        response = await self.request_tracks(
            TrackObject.local(track_name, kind="audio", bidirectional_media_stream=bidirectional or None)
        )
        return response.tracks[0].mid or ""

    async def pull(self, session_id: str, track_name: str, *, mid: str | None = None) -> str:
        """Play another session's track; ``mid="#ourTrack"`` reuses our transceiver. Returns the mid."""
        response = await self.request_tracks(TrackObject.remote(session_id, track_name, mid=mid))
        return response.tracks[0].mid or ""

    async def request_tracks(self, *tracks: TrackObject) -> TracksResponse:
        """tracks/new without an offer; answers the SFU's offer through renegotiate when it sends one."""
        response = await self.sfu.new_tracks(self.session_id, TracksRequest(tracks=tracks))
        response.raise_for_item_errors()
        if response.requires_immediate_renegotiation:
            if response.session_description is None:
                raise RuntimeError("requiresImmediateRenegotiation without an SFU offer")
            await self.peer.apply_offer(response.session_description.sdp)
            answer = await self.peer.create_answer()
            await self.sfu.renegotiate(self.session_id, SessionDescription.answer(answer))
            await self.peer.refresh_fast_path()
        return response

    async def wait_connected(self, within: float = 10.0) -> None:
        await wait_connected(self.peer.pc, within=within)

    @property
    def fast_path(self) -> SrtpFastPath:
        if self.peer.fast_path is None:
            raise RuntimeError("not connected (no fast path yet)")
        return self.peer.fast_path

    def outbound(self, mid: str) -> OutboundStream:
        return self.fast_path.outbound(mid)

    def mid_of_ssrc(self, ssrc: int) -> str | None:
        """Which of our m-sections a received SSRC belongs to (from the SFU's SDP)."""
        for stream in self.peer.negotiated_streams():
            if ssrc in stream.remote_ssrcs:
                return stream.mid
        return None

    async def close(self) -> None:
        await self.peer.close()
