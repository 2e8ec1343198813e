"""Structured mutators shared by the fuzz targets: bytes, text, JSON documents, SDP, paths.

Each starts from a valid input and breaks it a few ways at once, so most inputs get past the first check
and reach deeper code: a JSON body keeps its shape but gains a value nested 2,000 deep, an SDP offer keeps
its lines but loses one or gains a garbled one. The hostile values are the ones issue 13 names (deep
nesting, huge numbers, NaN, lone surrogates, invalid UTF-8, null bytes, percent-encoding, overlong).
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from typing import Any, Final

from tests.fuzz.engine import Source, chance, choice

INTERESTING_BYTES: Final = (
    0x00,
    0xFF,
    0x7F,
    0x80,
    0x01,
    0x22,
    0x5C,
    0x7B,
    0x5B,
    0x7D,
    0x5D,
    0xC0,
    0xED,
    0xF4,
)
INTERESTING_INTS: Final = (
    0, -1, 1, 2**31 - 1, 2**31, 2**32 - 1, 2**32, 2**53 + 1, 2**63 - 1, 2**63, 2**64, -(2**63), 10**300,
)  # fmt: skip


@dataclass(frozen=True)
class Raw:
    """A JSON fragment written as is: what ``json.dumps`` cannot make (``1e999``, ``[[[[``, ``"\\ud800"``)."""

    text: str


def hostile_raw(source: Source) -> Raw:
    """One JSON value text that breaks a naive parser or a naive consumer."""
    kind = source.integer(0, 15)
    if kind == 0:
        depth = choice(source, (31, 32, 33, 64, 1000, 1100, 5000, 20000))
        opener, closer = choice(source, (("[", "]"), ('{"a":', "}")))
        return Raw(opener * depth + "1" + closer * (depth if not chance(source, 4) else 0))
    if kind == 1:
        return Raw(choice(source, ("NaN", "Infinity", "-Infinity", "1e309", "-1e999", "1E400", "nan", "inf")))
    if kind == 2:
        return Raw("9" * choice(source, (19, 20, 309, 4300, 4301, 5000, 20000)))
    if kind == 3:
        return Raw(choice(source, ('"\\ud83d"', '"\\udfff\\ud800"', '"a\\ud800b"', '"\\u0000"', '"\\uZZZZ"')))
    if kind == 4:
        return Raw(choice(source, ("-0", "0.0", "1e-400", "-1e308", "1.7976931348623157e308", "5e-324")))
    if kind == 5:
        return Raw(json.dumps("x" * choice(source, (1, 129, 256, 4097, 33000, 70000))))
    if kind == 6:
        return Raw(choice(source, ("[]", "{}", "null", "true", "false", '""', '" "', "[null]", '{"":{}}')))
    if kind == 7:
        return Raw(json.dumps(source.text(0, 40), ensure_ascii=chance(source, 2)))
    if kind == 8:
        return Raw(str(choice(source, INTERESTING_INTS)))
    if kind == 9:
        return Raw("[" + ",".join(["{}"] * choice(source, (65, 1000, 5000))) + "]")
    if kind == 10:
        return Raw("{" + ",".join(f'"k{i}":{i}' for i in range(choice(source, (65, 500, 3000)))) + "}")
    if kind == 11:
        return Raw(choice(source, ("[[]]", "[{}]", '[["calls"]]', '{"a":[]}', "[1,[2,[3]]]")))
    if kind == 12:
        return Raw(str(source.integer(-(2**70), 2**70)))
    if kind == 13:
        return Raw(choice(source, ("1.5", "0.1", "-2.5e3", "1e18", "3.0")))
    if kind == 14:
        return Raw(json.dumps(choice(source, ("calls", "ice", "offer", "answer", "local", "remote", "sfu"))))
    return Raw('"' + choice(source, ("\\", "\\x", "\x00", "\n", "\\u12")) + '"')  # broken escapes


def dumps(value: Any) -> str:
    """JSON text of ``value``, with :class:`Raw` fragments spliced in as written."""
    if isinstance(value, Raw):
        return value.text
    if isinstance(value, dict):
        return "{" + ",".join(f"{json.dumps(str(k))}:{dumps(v)}" for k, v in value.items()) + "}"
    if isinstance(value, list):
        return "[" + ",".join(dumps(v) for v in value) + "]"
    return json.dumps(value)


def _containers(value: Any, out: list[Any], depth: int = 0) -> None:
    if depth > 8:
        return
    if isinstance(value, dict | list):
        out.append(value)
        for child in value.values() if isinstance(value, dict) else value:
            _containers(child, out, depth + 1)


def _copy(value: Any) -> Any:
    if isinstance(value, dict):
        return {k: _copy(v) for k, v in value.items()}
    if isinstance(value, list):
        return [_copy(v) for v in value]
    return value


def mutate_doc(source: Source, doc: Any, *, keys: tuple[str, ...] = ()) -> Any:
    """A copy of ``doc`` with 1 to 3 structural changes: values replaced (hostile or retyped), keys
    added, dropped or renamed, containers wrapped. ``keys`` are names worth adding (the schema's own)."""
    doc = _copy(doc)
    for _ in range(source.integer(1, 3)):
        containers: list[Any] = []
        _containers(doc, containers)
        if not containers or chance(source, 12):
            doc = hostile_raw(source) if chance(source, 2) else [doc]
            continue
        target = choice(source, containers)
        op = source.integer(0, 5)
        if isinstance(target, dict):
            names = list(target)
            if op <= 2 and names:
                name = choice(source, names)
                target[name] = hostile_raw(source) if op < 2 else _retyped(source, target[name])
            elif op == 3 and names:
                del target[choice(source, names)]
            elif op == 4 and names:
                name = choice(source, names)
                target[_mangled(source, name)] = target.pop(name)
            else:
                name = choice(source, keys) if keys and chance(source, 2) else source.text(0, 12)
                target[name] = hostile_raw(source) if chance(source, 2) else _retyped(source, None)
        else:
            if op <= 2 and target:
                target[source.integer(0, len(target) - 1)] = hostile_raw(source)
            elif op == 3 and target:
                del target[source.integer(0, len(target) - 1)]
            else:
                target.append(hostile_raw(source) if target == [] or chance(source, 2) else target[0])
    return doc


def _retyped(source: Source, value: Any) -> Any:
    return choice(
        source,
        (None, True, 0, -1, 1.5, "", "x", [], {}, [value], {"": value}, str(value), 2**64, "offer", "calls"),
    )


def _mangled(source: Source, name: str) -> str:
    return choice(
        source, (name.upper(), name + " ", "", name[:-1], name + "\x00", f"{name}{name}", "__proto__")
    )


def mutate_bytes(source: Source, data: bytes, *, max_len: int = 1 << 17) -> bytes:
    """1 to 4 byte-level changes: flips, interesting bytes, inserts, deletes, duplicates, truncation."""
    buf = bytearray(data)
    for _ in range(source.integer(1, 4)):
        op = source.integer(0, 7)
        n = len(buf)
        at = source.integer(0, n) if n else 0
        if op == 0 and n:
            buf[min(at, n - 1)] ^= 1 << source.integer(0, 7)
        elif op == 1 and n:
            buf[min(at, n - 1)] = choice(source, INTERESTING_BYTES)
        elif op == 2:
            buf[at:at] = source.blob(1, 8)
        elif op == 3 and n:
            del buf[at : at + source.integer(1, 16)]
        elif op == 4 and n:
            end = min(n, at + source.integer(1, 64))
            buf[at:at] = buf[at:end] * source.integer(1, 4)
        elif op == 5:
            del buf[at:]
        elif op == 6:
            buf[at:at] = choice(
                source, (b"\xff\xfe", b"\xc0\x80", b"\xed\xa0\x80", b"\xf4\x90\x80\x80", b"\x00")
            )
        else:
            buf[at:at] = choice(source, (b"\\u", b'"', b"{", b"[", b"]", b"}", b"\r\n", b"%00", b"."))
    return bytes(buf[:max_len])


def mutate_text(source: Source, text: str, *, tokens: tuple[str, ...] = ()) -> str:
    """1 to 3 character-level changes, splicing in hostile characters or ``tokens``."""
    for _ in range(source.integer(1, 3)):
        n = len(text)
        at = source.integer(0, n)
        op = source.integer(0, 4)
        if op == 0:
            text = text[:at] + source.text(1, 6) + text[at:]
        elif op == 1 and n:
            text = text[:at] + text[at + source.integer(1, 8) :]
        elif op == 2 and tokens:
            text = text[:at] + choice(source, tokens) + text[at:]
        elif op == 3:
            text = text[:at]
        else:
            text = text[:at] + text[at:] * source.integer(1, 3)
    return text


# --- paths -----------------------------------------------------------------------------------------

PATH_TOKENS: Final = (
    "%00", "%2F", "%2f", "%", "%zz", "%ff", "%C0%AE", "%e2%80%ae", "..", "/", "//", "\x00", ":", "?", "#",
    "%3A", "%20", ";", "\\", "\ud800", "é", "%u002e", "~", "*", "\r\n", " ",
)  # fmt: skip


def hostile_path(source: Source, valid: tuple[str, ...]) -> str:
    """A path from ``valid`` mutated, or an overlong one."""
    if chance(source, 10):
        return "/" + choice(source, ("a", "%00", "v1/calls/", "x/")) * choice(
            source, (100, 2000, 8000, 20000)
        )
    path = choice(source, valid)
    return mutate_text(source, path, tokens=PATH_TOKENS) if not chance(source, 6) else path


# --- SDP -------------------------------------------------------------------------------------------

SDP_LINES: Final = (
    "m=audio 9 UDP/TLS/RTP/SAVPF 111", "m=audio 0 UDP/TLS/RTP/SAVPF 111", "m=video 9 UDP/TLS/RTP/SAVPF 96",
    "m=application 9 UDP/DTLS/SCTP webrtc-datachannel", "m=audio 9 UDP/TLS/RTP/SAVPF", "m=audio x y z",
    "m=", "a=mid:", "a=mid:0", "a=mid:1", "a=group:BUNDLE 0 1 7", "a=group:BUNDLE", "c=IN IP4 127.0/0.1",
    "c=IN IP6 ::1", "c=IN IP4", "a=rtcp:9 IN IP4 0.0.0.0", "a=rtcp:x", "a=rtcp-mux",
    "a=rtpmap:111 opus/48000/2",
    "a=rtpmap:111 opus", "a=rtpmap:abc opus/48000/2", "a=rtpmap:111", "a=fmtp:111 minptime=10;useinbandfec=1",
    "a=fmtp:111", "a=fmtp:x", "a=ssrc:1 cname:x", "a=ssrc:x", "a=ssrc-group:FID 1 2", "a=ssrc-group:FID",
    "a=extmap:1 urn:ietf:params:rtp-hdrext:ssrc-audio-level", "a=extmap:x", "a=extmap:1",
    "a=candidate:1 1 udp 2122260223 127.0.0.1 9 typ host", "a=candidate:1 1 udp x 127.0/0.1 9 typ host",
    "a=candidate:", "a=end-of-candidates", "a=ice-ufrag:", "a=ice-pwd:", "a=ice-ufrag:Xk3e",
    "a=fingerprint:sha-256", "a=fingerprint:sha-256 00", "a=fingerprint:", "a=setup:", "a=setup:active",
    "a=setup:passive", "a=setup:x", "a=sendrecv", "a=recvonly", "a=inactive", "a=sendonly", "a=msid:- x",
    "a=rtcp-fb:111 transport-cc", "a=rtcp-fb:x", "a=sctp-port:5000", "a=sctp-port:x", "a=max-message-size:x",
    "a=ice-options:trickle", "b=AS:x", "o=- x x IN IP4 127.0.0.1", "o=", "v=1", "t=x", "s=", "a=", "x=y",
    "a=rid:1 send", "a=simulcast:send 1;2", "a=ptime:x", "a=maxptime:", "a=ice-lite",
)  # fmt: skip
SDP_TOKENS: Final = (
    "\r\n", "\n", "\r", " ", ":", "/", "=", "\x00", "-1", "0", "99999999999999999999", "127.0/0.1", "ab:cd",
    "%",
)  # fmt: skip


def mutate_sdp(source: Source, sdp: str) -> str:
    """1 to 4 line-level changes to a valid SDP: drop, duplicate, swap, garble or insert lines, truncate."""
    ending = "\r\n" if "\r\n" in sdp else "\n"
    lines = sdp.split(ending)
    if lines and lines[-1] == "":
        lines.pop()
    for _ in range(source.integer(1, 4)):
        n = len(lines)
        op = source.integer(0, 7)
        at = source.integer(0, n - 1) if n else 0
        if op == 0 and n:
            del lines[at]
        elif op == 1 and n:
            lines.insert(at, lines[source.integer(0, n - 1)])
        elif op == 2 and n > 1:
            other = source.integer(0, n - 1)
            lines[at], lines[other] = lines[other], lines[at]
        elif op == 3 and n:
            lines[at] = mutate_text(source, lines[at], tokens=SDP_TOKENS)
        elif op == 4:
            lines.insert(at, choice(source, SDP_LINES))
        elif op == 5 and n:
            head, sep, _ = lines[at].partition(choice(source, (":", "=", " ")))
            lines[at] = head + sep + choice(source, (*SDP_TOKENS, "", "x" * 300))
        elif op == 6 and n:
            lines = lines[: source.integer(1, n)]
        else:
            block = [line for line in lines if not line.startswith(("v=", "o=", "s=", "t=", "a=group"))]
            lines.extend(block[: source.integer(0, len(block))])  # a second m-section-ish copy
    text = ending.join(lines) + (ending if not chance(source, 5) else "")
    if chance(source, 8):
        text = text.replace("\r\n", choice(source, ("\n", "\r", "\r\r\n")))
    return text
