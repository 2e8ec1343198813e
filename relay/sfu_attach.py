"""SFU attach mode: the relay joins a Cloudflare Realtime SFU as its own session.

Flow (one sendrecv audio transceiver on the relay's peer, as in direct mode):
1. sessions/new for the relay (correlationId = call id);
2. tracks/new pushing the relay's output track with the relay's offer → SFU answer;
3. tracks/new pulling the caller's mic into the same transceiver (`mid: "#<relay track>"`); if the SFU
   asks for renegotiation, answer its offer and PUT renegotiate.
The edge then pulls the relay's output track into the caller's transceiver the same way.
"""

from __future__ import annotations

import contextlib
import logging

from aiortc import RTCSessionDescription

from splitrelay.contract.api_error import SfuApiError
from splitrelay.contract.sfu import (
    CloseTracksRequest,
    SessionDescription,
    TrackObject,
    TracksRequest,
    mid_for_track,
)
from splitrelay.relay.media.peer import VoicePeer
from splitrelay.relay.sfu_client import SfuClient

log = logging.getLogger("splitrelay.relay.sfu")


def relay_track_name(call_id: str) -> str:
    """The relay's output track on the SFU, named after the call so operators can find it."""
    return f"relay-{call_id}"


class SfuAttacher:
    """Creates and tears down the relay's SFU session for each call."""

    def __init__(self, client: SfuClient) -> None:
        self.client = client
        self.sessions: dict[str, tuple[str, str]] = {}  # call id -> (session id, mid)

    async def attach(
        self, peer: VoicePeer, call_id: str, caller_session_id: str, caller_track_name: str
    ) -> tuple[str, str]:
        """Wire `peer` to the SFU: returns (relay session id, relay output track name)."""
        session = await self.client.new_session(correlation_id=call_id)
        offer = await peer.create_offer()
        mid = peer.transceiver.mid
        if mid is None:
            raise RuntimeError("relay offer has no mid on its audio transceiver")
        track_name = relay_track_name(call_id)
        self.sessions[call_id] = (session.session_id, mid)
        pushed = await self.client.new_tracks(
            session.session_id,
            TracksRequest(
                session_description=SessionDescription.offer(offer),
                tracks=(TrackObject.local(track_name, mid=mid),),
            ),
        )
        pushed.raise_for_item_errors()
        if pushed.session_description is None:
            raise SfuApiError(
                200, "", "tracks/new: the SFU sent no answer to the relay's offer", retryable=False
            )
        await peer.accept_answer(pushed.session_description.sdp)
        pulled = await self.client.new_tracks(
            session.session_id,
            TracksRequest(
                tracks=(
                    TrackObject.remote(caller_session_id, caller_track_name, mid=mid_for_track(track_name)),
                ),
            ),
        )
        pulled.raise_for_item_errors()
        if pulled.requires_immediate_renegotiation and pulled.session_description is not None:
            await peer.pc.setRemoteDescription(RTCSessionDescription(pulled.session_description.sdp, "offer"))
            answer = await peer.pc.createAnswer()
            await peer.pc.setLocalDescription(answer)
            await self.client.renegotiate(session.session_id, SessionDescription.answer(peer.local_sdp()))
        return session.session_id, track_name

    async def detach(self, call_id: str) -> None:
        """Close the relay's tracks on the SFU; a session that is already gone is fine."""
        entry = self.sessions.pop(call_id, None)
        if entry is None:
            return
        session_id, mid = entry
        with contextlib.suppress(SfuApiError):
            response = await self.client.close_tracks(
                session_id, CloseTracksRequest.for_mids([mid], force=True)
            )
            response.raise_for_item_errors()
