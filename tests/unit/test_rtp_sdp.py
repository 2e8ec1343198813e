"""SDP reading and Opus fmtp munging for the fast path (relay/media/sdp.py)."""

from __future__ import annotations

import pytest
from aioice.candidate import Candidate

from splitrelay.relay.media.rtp import AUDIO_LEVEL_URI, MID_URI
from splitrelay.relay.media.sdp import (
    advertise_public_address,
    check_bundle_groups,
    check_fmtp,
    negotiated_audio_streams,
    parse_media_sections,
    set_codec_fmtp,
)

# The shape of a Chrome audio offer (trimmed: no candidates), payload types and extension ids as Chrome uses.
CHROME_OFFER = "\r\n".join(
    [
        "v=0",
        "o=- 4611731400430051336 2 IN IP4 127.0.0.1",
        "s=-",
        "t=0 0",
        "a=group:BUNDLE 0",
        "a=msid-semantic: WMS stream",
        "m=audio 9 UDP/TLS/RTP/SAVPF 111 63 9 0 8 13 110 126",
        "c=IN IP4 0.0.0.0",
        "a=rtcp:9 IN IP4 0.0.0.0",
        "a=ice-ufrag:abcd",
        "a=ice-pwd:abcdefghijklmnopqrstuvwx",
        "a=fingerprint:sha-256 00:11",
        "a=setup:actpass",
        "a=mid:0",
        "a=extmap:1 urn:ietf:params:rtp-hdrext:ssrc-audio-level",
        "a=extmap:2 http://www.webrtc.org/experiments/rtp-hdrext/abs-send-time",
        "a=extmap:3 http://www.ietf.org/id/draft-holmer-rmcat-transport-wide-cc-extensions-01",
        "a=extmap:4/sendrecv urn:ietf:params:rtp-hdrext:sdes:mid",
        "a=sendrecv",
        "a=msid:stream track",
        "a=rtcp-mux",
        "a=rtpmap:111 opus/48000/2",
        "a=rtcp-fb:111 transport-cc",
        "a=fmtp:111 minptime=10;useinbandfec=1",
        "a=rtpmap:63 red/48000/2",
        "a=fmtp:63 111/111",
        "a=rtpmap:9 G722/8000",
        "a=rtpmap:0 PCMU/8000",
        "a=rtpmap:8 PCMA/8000",
        "a=rtpmap:13 CN/8000",
        "a=rtpmap:110 telephone-event/48000",
        "a=rtpmap:126 telephone-event/8000",
        "a=ssrc:1001 cname:browser-cname",
        "a=ssrc:1001 msid:stream track",
        "",
    ]
)

# What our side answers: Opus only, our fmtp, the two extensions we support, our SSRC.
OUR_ANSWER = "\r\n".join(
    [
        "v=0",
        "o=- 1 1 IN IP4 0.0.0.0",
        "s=-",
        "t=0 0",
        "a=group:BUNDLE 0",
        "m=audio 40000 UDP/TLS/RTP/SAVPF 111",
        "c=IN IP4 127.0.0.1",
        "a=sendrecv",
        "a=extmap:1 urn:ietf:params:rtp-hdrext:ssrc-audio-level",
        "a=extmap:4 urn:ietf:params:rtp-hdrext:sdes:mid",
        "a=mid:0",
        "a=rtcp-mux",
        "a=ssrc:2002 cname:relay-cname",
        "a=rtpmap:111 opus/48000/2",
        "",
    ]
)


def test_parse_chrome_offer() -> None:
    (audio,) = parse_media_sections(CHROME_OFFER)
    assert audio.kind == "audio" and audio.mid == "0" and audio.direction == "sendrecv"
    assert [c.payload_type for c in audio.codecs] == [111, 63, 9, 0, 8, 13, 110, 126]
    opus = audio.codecs[0]
    assert (opus.name, opus.clock_rate, opus.channels) == ("opus", 48000, 2)
    assert opus.fmtp == {"minptime": "10", "useinbandfec": "1"}
    assert audio.codecs[2].channels == 1
    assert audio.extensions[AUDIO_LEVEL_URI] == 1 and audio.extensions[MID_URI] == 4
    assert audio.ssrcs == (1001,) and audio.cname == "browser-cname"


def test_a_bundle_group_may_name_only_the_sdps_own_mids() -> None:
    assert "a=group:BUNDLE 0" in CHROME_OFFER
    check_bundle_groups(CHROME_OFFER, parse_media_sections(CHROME_OFFER))
    bad = CHROME_OFFER.replace("a=group:BUNDLE 0", "a=group:BUNDLE x 0")
    with pytest.raises(ValueError, match="names mid 'x', which no m-section has"):
        check_bundle_groups(bad, parse_media_sections(bad))


def test_session_level_direction_is_the_default() -> None:
    sdp = "v=0\r\na=recvonly\r\nm=audio 9 UDP/TLS/RTP/SAVPF 96\r\na=rtpmap:96 opus/48000/2\r\n"
    assert parse_media_sections(sdp)[0].direction == "recvonly"


def test_malformed_lines_are_named() -> None:
    with pytest.raises(ValueError, match="malformed media line"):
        parse_media_sections("m=audio 9\r\n")
    with pytest.raises(ValueError, match=r"malformed attribute line 'a=rtpmap:x opus/48000'"):
        parse_media_sections("m=audio 9 RTP/AVP 96\r\na=rtpmap:x opus/48000\r\n")


def test_set_fmtp_adds_a_line_after_rtpmap_when_none() -> None:
    out = set_codec_fmtp(OUR_ANSWER, "opus", {"minptime": 10, "useinbandfec": 1})
    lines = out.split("\r\n")
    i = lines.index("a=rtpmap:111 opus/48000/2")
    assert lines[i + 1] == "a=fmtp:111 minptime=10;useinbandfec=1"
    assert out.endswith("\r\n") and "\n" not in out.replace("\r\n", "")
    assert parse_media_sections(out)[0].codecs[0].fmtp == {"minptime": "10", "useinbandfec": "1"}


def test_set_fmtp_merges_and_only_touches_the_codec() -> None:
    out = set_codec_fmtp(CHROME_OFFER, "OPUS", {"useinbandfec": 0, "usedtx": 1})
    assert out.count("a=fmtp:111 ") == 1
    assert "a=fmtp:111 minptime=10;useinbandfec=0;usedtx=1" in out
    assert "a=fmtp:63 111/111" in out


def test_fmtp_values_that_would_break_the_line_are_rejected() -> None:
    with pytest.raises(ValueError, match="fmtp parameter name 'a;b'"):
        check_fmtp({"a;b": 1})
    with pytest.raises(ValueError, match="fmtp parameter useinbandfec: value '1 2'"):
        set_codec_fmtp(OUR_ANSWER, "opus", {"useinbandfec": "1 2"})


def test_negotiated_as_answerer() -> None:
    (params,) = negotiated_audio_streams(OUR_ANSWER, CHROME_OFFER, local_is_answer=True)
    assert params.payload_type == 111 and params.clock_rate == 48000 and params.channels == 2
    assert params.ssrc == 2002 and params.cname == "relay-cname" and params.remote_ssrcs == (1001,)
    assert (params.audio_level_id, params.mid_ext_id, params.mid) == (1, 4, "0")
    assert params.sends and params.receives


def test_negotiated_as_offerer_reads_the_remote_answer() -> None:
    offer = CHROME_OFFER
    answer = OUR_ANSWER.replace("a=extmap:1 urn:ietf:params:rtp-hdrext:ssrc-audio-level\r\n", "").replace(
        "a=sendrecv", "a=recvonly"
    )
    (params,) = negotiated_audio_streams(offer, answer, local_is_answer=False)
    assert params.ssrc == 1001 and params.remote_ssrcs == (2002,)
    assert params.audio_level_id is None  # the answer declined it
    assert params.sends and not params.receives


def test_negotiation_errors() -> None:
    with pytest.raises(ValueError, match="local has 1 m-sections, remote has 0"):
        negotiated_audio_streams(OUR_ANSWER, "v=0\r\n", local_is_answer=True)
    no_opus = OUR_ANSWER.replace("111", "0").replace("opus/48000/2", "PCMU/8000")
    with pytest.raises(ValueError, match="no opus codec in the answer"):
        negotiated_audio_streams(no_opus, CHROME_OFFER, local_is_answer=True)
    no_ssrc = OUR_ANSWER.replace("a=ssrc:2002 cname:relay-cname\r\n", "")
    with pytest.raises(ValueError, match="no a=ssrc with cname"):
        negotiated_audio_streams(no_ssrc, CHROME_OFFER, local_is_answer=True)


HOST_CANDIDATES = (
    "v=0\r\nm=audio 9 UDP/TLS/RTP/SAVPF 96\r\n"
    "a=candidate:abc 1 udp 2130706431 10.0.1.5 40001 typ host\r\n"
    "a=candidate:def 1 udp 2130706431 fd00::5 40002 typ host\r\n"
    "a=candidate:ghi 1 tcp 1518280447 10.0.1.5 9 typ host tcptype active\r\n"
    "a=end-of-candidates\r\n"
)


def test_public_address_adds_one_reflexive_candidate_per_ipv4_udp_host_candidate() -> None:
    out = advertise_public_address(HOST_CANDIDATES, "52.95.110.7")
    added = [line for line in out.split("\r\n") if "typ srflx" in line]
    assert len(added) == 1
    candidate = Candidate.from_sdp(added[0][len("a=candidate:") :])
    assert (candidate.host, candidate.port, candidate.type) == ("52.95.110.7", 40001, "srflx")
    assert (candidate.related_address, candidate.related_port) == ("10.0.1.5", 40001)
    assert candidate.priority < 2130706431  # below the host candidate it maps
    assert out.split("\r\n").index(added[0]) == 3  # right after its host candidate, before the end
    assert out.replace(added[0] + "\r\n", "") == HOST_CANDIDATES


@pytest.mark.parametrize(
    "bad", ["10.0.0.1", "127.0.0.1", "203.0.113.7", "100.64.0.1", "0.0.0.0", "2001:db8::1", "example.com"]
)
def test_public_address_must_be_a_public_ipv4(bad: str) -> None:
    with pytest.raises(ValueError, match="public_address"):
        advertise_public_address(HOST_CANDIDATES, bad)
