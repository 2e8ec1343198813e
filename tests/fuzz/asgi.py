"""One HTTP request into an ASGI app in process, shaped as uvicorn's h11 protocol would shape it.

No sockets and no HTTP client: the fuzz targets need thousands of requests a second. What reaches the app
is only what uvicorn would hand on, so a failure is a failure the real server would show: the request
target is visible ASCII (anything else is percent-encoded, as a client must), ``path`` is its
percent-decoded form (``unquote``, as uvicorn does) and ``raw_path`` the bytes as sent, header names are
lower-case tokens and values carry no NUL, CR or LF, and Content-Length matches the body (h11 checks it).
"""

from __future__ import annotations

import asyncio
import json
import re
from dataclasses import dataclass
from typing import Any, Final
from urllib.parse import quote, unquote

from starlette.types import ASGIApp, Message

_NOT_VCHAR: Final = re.compile(r"[^\x21-\x7e]")
_TOKEN: Final = re.compile(r"[-!#$%&'*+.^_`|~0-9a-zA-Z]+")
RESPONSE_TIMEOUT_S: Final = 30.0


@dataclass(frozen=True)
class Reply:
    status: int
    headers: dict[str, str]
    body: bytes

    def json(self) -> Any:
        return json.loads(self.body)


def request_target(text: str) -> bytes:
    """What a client puts on the request line for ``text``: visible ASCII, the rest percent-encoded."""
    text = text.encode("utf-8", "surrogatepass").decode(
        "utf-8", "replace"
    )  # a client cannot send a lone surrogate
    encoded = _NOT_VCHAR.sub(lambda m: quote(m.group(), safe=""), text)
    target = encoded.encode("ascii", "replace") or b"/"
    return target if target.startswith((b"/", b"*")) else b"/" + target


def header_value(text: str) -> bytes:
    data = text.encode("utf-8", "surrogatepass")
    return data.replace(b"\x00", b"").replace(b"\r", b"").replace(b"\n", b"").strip(b" \t")


async def call(
    app: ASGIApp,
    method: str,
    target: bytes,
    headers: list[tuple[str, str]],
    body: bytes = b"",
) -> Reply:
    """Send one request; ``headers`` are cleaned to what h11 accepts and Content-Length is set."""
    if not _TOKEN.fullmatch(method):
        method = "GET"
    raw_path, _, query = target.partition(b"?")
    cleaned = [
        (name.lower().encode("ascii"), header_value(value))
        for name, value in headers
        if _TOKEN.fullmatch(name) and name.lower() != "content-length"
    ]
    if body or method in ("POST", "PUT", "PATCH"):
        cleaned.append((b"content-length", str(len(body)).encode()))
    scope: dict[str, Any] = {
        "type": "http",
        "asgi": {"version": "3.0", "spec_version": "2.3"},
        "http_version": "1.1",
        "server": ("127.0.0.1", 8700),
        "client": ("127.0.0.1", 50000),
        "scheme": "http",
        "method": method,
        "root_path": "",
        "path": unquote(raw_path.decode("ascii")),
        "raw_path": raw_path,
        "query_string": query,
        "headers": cleaned,
        "state": {},
    }
    pending = [{"type": "http.request", "body": body, "more_body": False}]
    done = asyncio.Event()
    status = 0
    reply_headers: dict[str, str] = {}
    chunks: list[bytes] = []

    async def receive() -> Message:
        if pending:
            return pending.pop()
        await done.wait()  # as uvicorn: nothing more until the client goes away
        return {"type": "http.disconnect"}

    async def send(message: Message) -> None:
        nonlocal status
        if message["type"] == "http.response.start":
            status = int(message["status"])
            reply_headers.update((k.decode("latin-1"), v.decode("latin-1")) for k, v in message["headers"])
        elif message["type"] == "http.response.body":
            chunks.append(message.get("body", b""))
            if not message.get("more_body", False):
                done.set()

    try:
        await asyncio.wait_for(app(scope, receive, send), timeout=RESPONSE_TIMEOUT_S)
    finally:
        done.set()
    assert status, f"no response to {method} {target[:120]!r}"
    return Reply(status, reply_headers, b"".join(chunks))
