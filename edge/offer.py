"""What the edge checks in a caller's SDP offer before spending an SFU call on it.

A voice call is one sendrecv audio transceiver with Opus: the SFU pushes its mic and pulls the relay's
voice into the same transceiver. Anything else (no audio, two audio sections, video, a one-way
transceiver, an oversized SDP) is refused here with a 400 naming the field and the limit; the SFU
still validates the rest (ICE, DTLS), and its refusal is mapped to 400 as well.
"""

from __future__ import annotations

import re
from dataclasses import dataclass
from typing import Final

from splitrelay.contract.control import MAX_SDP_CHARS  # the relay's limit: the offer may go there as is
from splitrelay.edge.web import EdgeError

MAX_SDP_LINES: Final = 2000
MAX_MID_CHARS: Final = 32
DIRECTIONS: Final = ("sendrecv", "sendonly", "recvonly", "inactive")
_MID: Final = re.compile(r"[A-Za-z0-9_.~+-]{1,32}")
_OPUS: Final = re.compile(r"a=rtpmap:\d{1,3} opus/48000(/2)?$", re.IGNORECASE)


@dataclass(frozen=True)
class OfferFacts:
    """The facts the call flow needs from a valid offer."""

    mid: str  # the audio transceiver's mid: the mic track is pushed on it, the relay pulled into it
    ice_ufrag: str | None  # changes on an ICE restart; kept in the call record


def _error(field: str, message: str) -> EdgeError:
    return EdgeError(400, "invalid_offer", f"{field}: {message}", field=field)


def check_offer(sdp: object, field: str = "offer.sdp") -> OfferFacts:
    """Check one SDP offer: size, one sendrecv Opus audio m-section with a mid, nothing else."""
    if not isinstance(sdp, str):
        raise _error(field, "must be a string")
    if not sdp.strip():
        raise _error(field, "must not be empty")
    if len(sdp) > MAX_SDP_CHARS:
        raise _error(field, f"must be at most {MAX_SDP_CHARS} characters, got {len(sdp)}")
    lines = sdp.replace("\r\n", "\n").split("\n")
    if len(lines) > MAX_SDP_LINES:
        raise _error(field, f"must have at most {MAX_SDP_LINES} lines")
    if lines[0] != "v=0":
        raise _error(field, "must start with 'v=0' (an SDP session description)")
    sections: list[list[str]] = [[]]
    for line in lines:
        if line.startswith("m="):
            sections.append([])
        sections[-1].append(line)
    session, media = sections[0], sections[1:]
    audio = [section for section in media if section[0].startswith("m=audio ")]
    if not audio:
        raise _error(field, "has no audio m-section (a call needs one sendrecv audio transceiver)")
    if len(audio) > 1:
        raise _error(field, f"has {len(audio)} audio m-sections; a call takes exactly one")
    others = [section[0].split(" ", 1)[0][2:] for section in media if not section[0].startswith("m=audio ")]
    if others:
        raise _error(field, f"has a {others[0][:16]!r} m-section; a voice call offers audio only")
    section = audio[0]
    parts = section[0].split()
    if len(parts) < 4 or not parts[1].isdigit():
        raise _error(field, "audio m-line must be 'm=audio <port> <proto> <formats>'")
    if parts[1] == "0":
        raise _error(field, "audio m-section is rejected (port 0)")
    session_direction = next((line[2:] for line in session if line[2:] in DIRECTIONS), "sendrecv")
    direction = next((line[2:] for line in section if line[2:] in DIRECTIONS), session_direction)
    if direction != "sendrecv":
        raise _error(
            field, f"audio m-section must be sendrecv (the caller speaks and listens), got {direction}"
        )
    mids = [line[6:] for line in section if line.startswith("a=mid:")]
    if len(mids) != 1:
        raise _error(field, "audio m-section must carry exactly one a=mid line")
    if not _MID.fullmatch(mids[0]):
        raise _error(field, f"a=mid must be 1 to {MAX_MID_CHARS} characters of A-Z a-z 0-9 _ . ~ + -")
    if not any(_OPUS.match(line) for line in section):
        raise _error(field, "audio m-section must offer Opus (a=rtpmap:<pt> opus/48000/2)")
    ufrag = next((line[12:] for line in section + session if line.startswith("a=ice-ufrag:")), None)
    return OfferFacts(mid=mids[0], ice_ufrag=ufrag)
