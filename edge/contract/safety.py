"""What may go into an HTTP header, a URL or a log line: secrets, path ids, base URLs, remote text.

:class:`Secret` keeps a bearer token out of repr, str and errors; :func:`path_segment` checks an id
before it goes into a URL path; :func:`check_base_url` checks an API root; :func:`clean_text` makes text
from elsewhere safe to log. Pure standard library: it runs in the Worker (Pyodide) and on the relay.
"""

from __future__ import annotations

import hmac
import re
from typing import Final
from urllib.parse import quote

from splitrelay.contract.json_fields import SchemaError, json_type

MAX_PATH_ID_CHARS: Final = 256  # our bound for ids placed in a URL path (Cloudflare's are 32 hex chars)
MAX_SECRET_CHARS: Final = 4096
MAX_ERROR_TEXT_CHARS: Final = 300

_SECRET_CHARS = re.compile(r"[\x21-\x7e]+")  # printable ASCII, no space: safe in an HTTP header
_FORBIDDEN_IN_PATH = re.compile(r"[/?#%\s\x00-\x1f\x7f]")


class Secret:
    """A bearer token that only :meth:`reveal` gives out: repr, str and errors never show it."""

    __slots__ = ("_value",)

    def __init__(self, value: str, *, field: str = "secret") -> None:
        if not isinstance(value, str):
            raise SchemaError(field, f"must be a string, got {json_type(value)}")
        if not value:
            raise SchemaError(field, "must not be empty")
        if len(value) > MAX_SECRET_CHARS:
            raise SchemaError(field, f"must be at most {MAX_SECRET_CHARS} characters")
        if not _SECRET_CHARS.fullmatch(value):
            raise SchemaError(field, "must be printable ASCII without spaces (it goes into an HTTP header)")
        self._value = value

    def reveal(self) -> str:
        return self._value

    def __repr__(self) -> str:
        return "Secret('<redacted>')"

    __str__ = __repr__

    def __eq__(self, other: object) -> bool:
        if not isinstance(other, Secret):
            return NotImplemented
        return hmac.compare_digest(self._value.encode(), other._value.encode())

    def __hash__(self) -> int:
        return hash(self._value)


def path_segment(value: object, field: str) -> str:
    """Check an id that goes into a URL path and percent-encode it (no '/', '?', '#', '%', spaces)."""
    if not isinstance(value, str):
        raise SchemaError(field, f"must be a string, got {json_type(value)}")
    if not 1 <= len(value) <= MAX_PATH_ID_CHARS:
        raise SchemaError(field, f"must be 1 to {MAX_PATH_ID_CHARS} characters, got {len(value)}")
    if _FORBIDDEN_IN_PATH.search(value):
        raise SchemaError(field, "must not contain '/', '?', '#', '%', whitespace or control characters")
    return quote(value, safe="")


def check_base_url(base_url: object) -> str:
    """The API root (``https://rtc.live.cloudflare.com/v1``) without its trailing slash."""
    if not isinstance(base_url, str):
        raise SchemaError("base_url", f"expected string, got {json_type(base_url)}")
    if not base_url.startswith(("https://", "http://")) or "?" in base_url or "#" in base_url:
        raise SchemaError("base_url", "must be an https:// URL (http:// for a local emulator) with no query")
    return base_url.rstrip("/")


def clean_text(text: str, limit: int = MAX_ERROR_TEXT_CHARS) -> str:
    """Make remote text safe to log: one line, printable, bounded."""
    flat = "".join(ch if ch.isprintable() else " " for ch in text)
    return flat if len(flat) <= limit else flat[: limit - 1] + "…"
