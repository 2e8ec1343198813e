"""What the fast path needs from an SDP offer/answer: codecs, header extension ids, SSRCs, directions.

Read from the descriptions themselves (public on every peer connection) rather than from aiortc's
private transceiver state, so the same code serves a browser's, the Cloudflare SFU's and aiortc's SDP.
"""

from __future__ import annotations

import ipaddress
import re
from collections.abc import Mapping
from dataclasses import dataclass, field

from aioice.candidate import Candidate, candidate_priority

from splitrelay.relay.media.rtp import AUDIO_LEVEL_URI, MID_URI

DIRECTIONS = ("sendrecv", "sendonly", "recvonly", "inactive")
_TOKEN = re.compile(r"^[A-Za-z0-9._-]+$")


@dataclass(frozen=True)
class Codec:
    payload_type: int
    name: str
    clock_rate: int
    channels: int
    fmtp: Mapping[str, str] = field(default_factory=dict)


@dataclass(frozen=True)
class MediaSection:
    kind: str
    mid: str | None
    direction: str
    codecs: tuple[Codec, ...]
    extensions: Mapping[str, int]
    """Header extension URI -> id."""
    ssrcs: tuple[int, ...]
    cname: str | None


@dataclass(frozen=True)
class StreamParams:
    """The negotiated parameters of one audio m-section, from the relay's side."""

    mid: str
    payload_type: int
    clock_rate: int
    channels: int
    ssrc: int
    """Our outbound SSRC, as announced in our own description."""
    cname: str
    remote_ssrcs: tuple[int, ...]
    audio_level_id: int | None
    mid_ext_id: int | None
    sends: bool
    receives: bool


def _lines(sdp: str) -> list[str]:
    return [line for line in sdp.replace("\r\n", "\n").split("\n") if line]


def parse_media_sections(sdp: str) -> list[MediaSection]:
    """The m-sections of an SDP, in order. Raises ValueError naming the malformed line.

    Not aiortc's SessionDescription.parse: this gates a peer's offer before aiortc sees it, and aiortc
    fails on malformed input with bare assert/StopIteration/KeyError naming no line, and drops a
    session-level direction attribute, which is the default for every m-section (RFC 4566).
    """
    sections: list[MediaSection] = []
    session_direction = "sendrecv"
    current: dict[str, object] | None = None

    def finish() -> None:
        if current is not None:
            sections.append(_section(current))

    for line in _lines(sdp):
        if line.startswith("m="):
            finish()
            parts = line[2:].split()
            if len(parts) < 3:
                raise ValueError(f"SDP: malformed media line {line!r}")
            current = {
                "kind": parts[0],
                "direction": session_direction,
                "mid": None,
                "rtpmap": {},
                "fmtp": {},
                "extensions": {},
                "ssrcs": [],
                "cname": None,
                "formats": parts[3:],
            }
            continue
        if not line.startswith("a="):
            continue
        attr, _, value = line[2:].partition(":")
        if current is None:
            if attr in DIRECTIONS:
                session_direction = attr
            continue
        try:
            _apply_attribute(current, attr, value)
        except (ValueError, IndexError) as exc:
            raise ValueError(f"SDP: malformed attribute line {line!r}") from exc
    finish()
    return sections


def check_bundle_groups(sdp: str, sections: list[MediaSection]) -> None:
    """Every mid an ``a=group:BUNDLE`` line names is one of the SDP's m-sections (RFC 8843 section 7.2).

    aiortc does not check this: it fails half-way through setRemoteDescription and leaves a transceiver
    with no transport, which its own close() then trips over. Raises ValueError naming the mid.
    """
    mids = {section.mid for section in sections if section.mid is not None}
    for line in _lines(sdp):
        if not line.startswith("a=group:BUNDLE"):
            continue
        for mid in line[len("a=group:BUNDLE") :].split():
            if mid not in mids:
                raise ValueError(
                    f"SDP: a=group:BUNDLE names mid {mid[:32]!r}, which no m-section has (RFC 8843)"
                )


def _apply_attribute(current: dict[str, object], attr: str, value: str) -> None:
    if attr in DIRECTIONS:
        current["direction"] = attr
    elif attr == "mid":
        current["mid"] = value.strip()
    elif attr == "rtpmap":
        pt, _, enc = value.partition(" ")
        bits = enc.strip().split("/")
        rtpmap = current["rtpmap"]
        assert isinstance(rtpmap, dict)
        rtpmap[int(pt)] = (bits[0], int(bits[1]), int(bits[2]) if len(bits) > 2 else 1)
    elif attr == "fmtp":
        pt, _, params = value.partition(" ")
        fmtp = current["fmtp"]
        assert isinstance(fmtp, dict)
        fmtp[int(pt)] = _parse_fmtp(params)
    elif attr == "extmap":
        ident, _, rest = value.partition(" ")
        uri = rest.split()[0]
        extensions = current["extensions"]
        assert isinstance(extensions, dict)
        extensions[uri] = int(ident.split("/")[0])
    elif attr == "ssrc":
        ident, _, rest = value.partition(" ")
        ssrc = int(ident)
        ssrcs = current["ssrcs"]
        assert isinstance(ssrcs, list)
        if ssrc not in ssrcs:
            ssrcs.append(ssrc)
        if rest.startswith("cname:") and current["cname"] is None:
            current["cname"] = rest[len("cname:") :].strip()


def _parse_fmtp(params: str) -> dict[str, str]:
    out: dict[str, str] = {}
    for item in params.split(";"):
        key, eq, val = item.strip().partition("=")
        if key:
            out[key] = val if eq else ""
    return out


def _section(raw: dict[str, object]) -> MediaSection:
    rtpmap = raw["rtpmap"]
    fmtp = raw["fmtp"]
    formats = raw["formats"]
    assert isinstance(rtpmap, dict) and isinstance(fmtp, dict) and isinstance(formats, list)
    codecs = []
    for fmt in formats:
        if fmt.isdigit() and int(fmt) in rtpmap:
            name, rate, channels = rtpmap[int(fmt)]
            codecs.append(Codec(int(fmt), name, rate, channels, fmtp.get(int(fmt), {})))
    mid = raw["mid"]
    cname = raw["cname"]
    extensions = raw["extensions"]
    ssrcs = raw["ssrcs"]
    assert isinstance(extensions, dict) and isinstance(ssrcs, list)
    return MediaSection(
        kind=str(raw["kind"]),
        mid=mid if isinstance(mid, str) else None,
        direction=str(raw["direction"]),
        codecs=tuple(codecs),
        extensions=dict(extensions),
        ssrcs=tuple(ssrcs),
        cname=cname if isinstance(cname, str) else None,
    )


def check_fmtp(params: Mapping[str, int | str]) -> None:
    """Reject fmtp names/values that would break the SDP line (``;``, spaces, newlines)."""
    for key, val in params.items():
        if not _TOKEN.match(key):
            raise ValueError(f"fmtp parameter name {key!r} must match {_TOKEN.pattern}")
        if not _TOKEN.match(str(val)):
            raise ValueError(f"fmtp parameter {key}: value {val!r} must match {_TOKEN.pattern}")


def set_codec_fmtp(sdp: str, codec_name: str, params: Mapping[str, int | str]) -> str:
    """Merge ``params`` into the fmtp line of every payload type of ``codec_name`` (e.g. opus).

    aiortc's Opus carries no fmtp; ``useinbandfec=1`` tells the browser that we can take in-band FEC.
    """
    check_fmtp(params)
    lines = _lines(sdp)
    targets: set[int] = set()
    for line in lines:
        if line.startswith("a=rtpmap:"):
            pt, _, enc = line[len("a=rtpmap:") :].partition(" ")
            if enc.split("/")[0].lower() == codec_name.lower():
                targets.add(int(pt))
    out: list[str] = []
    existing: dict[int, dict[str, str]] = {}
    for line in lines:
        if line.startswith("a=fmtp:"):
            pt, _, rest = line[len("a=fmtp:") :].partition(" ")
            if int(pt) in targets:
                existing[int(pt)] = _parse_fmtp(rest)
    for line in lines:
        if line.startswith("a=fmtp:") and int(line[len("a=fmtp:") :].partition(" ")[0]) in targets:
            continue
        out.append(line)
        if line.startswith("a=rtpmap:"):
            pt_text = line[len("a=rtpmap:") :].partition(" ")[0]
            if int(pt_text) in targets:
                merged = dict(existing.get(int(pt_text), {}))
                merged.update({k: str(v) for k, v in params.items()})
                joined = ";".join(f"{k}={v}" if v != "" else k for k, v in merged.items())
                out.append(f"a=fmtp:{pt_text} {joined}")
    return "\r\n".join(out) + "\r\n"


def negotiated_audio_streams(
    local_sdp: str, remote_sdp: str, *, local_is_answer: bool, codec_name: str = "opus"
) -> list[StreamParams]:
    """The audio streams both sides agreed on, with payload type and extension ids from the answer."""
    local = parse_media_sections(local_sdp)
    remote = parse_media_sections(remote_sdp)
    if len(local) != len(remote):
        raise ValueError(f"SDP: local has {len(local)} m-sections, remote has {len(remote)}; they must match")
    out: list[StreamParams] = []
    for index, (mine, theirs) in enumerate(zip(local, remote, strict=True)):
        if mine.kind != "audio":
            continue
        answer = mine if local_is_answer else theirs
        codec = next((c for c in answer.codecs if c.name.lower() == codec_name.lower()), None)
        if codec is None:
            raise ValueError(f"SDP: audio m-section {index} has no {codec_name} codec in the answer")
        if not mine.ssrcs or mine.cname is None:
            raise ValueError(
                f"SDP: audio m-section {index} of the local description has no a=ssrc with cname"
            )
        mid = mine.mid if mine.mid is not None else str(index)
        out.append(
            StreamParams(
                mid=mid,
                payload_type=codec.payload_type,
                clock_rate=codec.clock_rate,
                channels=codec.channels,
                ssrc=mine.ssrcs[0],
                cname=mine.cname,
                remote_ssrcs=theirs.ssrcs,
                audio_level_id=answer.extensions.get(AUDIO_LEVEL_URI),
                mid_ext_id=answer.extensions.get(MID_URI),
                sends=mine.direction in ("sendrecv", "sendonly")
                and theirs.direction in ("sendrecv", "recvonly"),
                receives=mine.direction in ("sendrecv", "recvonly")
                and theirs.direction in ("sendrecv", "sendonly"),
            )
        )
    return out


def advertise_public_address(sdp: str, public_ip: str) -> str:
    """Add a server-reflexive candidate on `public_ip` for every IPv4 host candidate (1:1 NAT).

    A relay on a cloud instance binds its private address; its Elastic IP maps 1:1 onto it. Telling the
    peer about the public address up front (as LiveKit's `node_ip` or Janus' `nat_1_1_mapping` do)
    needs no STUN round trip: checks sent to public_ip:port arrive on the same private socket.
    """
    try:
        address = ipaddress.ip_address(public_ip)
    except ValueError:
        address = None
    if address is None or address.version != 4 or not address.is_global:
        raise ValueError(f"public_address: must be a globally routable IPv4 address, got {public_ip!r}")
    lines = sdp.split("\r\n")
    out: list[str] = []
    for line in lines:
        out.append(line)
        if not line.startswith("a=candidate:"):
            continue
        host = Candidate.from_sdp(line[len("a=candidate:") :])
        if host.type != "host" or host.transport.lower() != "udp" or ":" in host.host:
            continue
        reflexive = Candidate(
            foundation=f"{host.foundation}n",
            component=host.component,
            transport=host.transport,
            priority=candidate_priority(host.component, "srflx"),
            host=public_ip,
            port=host.port,
            type="srflx",
            related_address=host.host,
            related_port=host.port,
        )
        out.append("a=candidate:" + reflexive.to_sdp())
    return "\r\n".join(out)
