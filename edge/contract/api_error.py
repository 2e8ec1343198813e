"""How a Realtime API call (SFU or TURN) fails: the spec's ``errorCode`` values, :class:`SfuApiError`,
and which HTTP statuses are worth another attempt.
"""

from __future__ import annotations

from enum import StrEnum

from splitrelay.contract.json_fields import RealtimeApiError
from splitrelay.contract.safety import clean_text


class ErrorCode(StrEnum):
    """``errorCode`` values named in the spec, plus three this client uses for failures with no SFU code."""

    DECODING_ERROR = "decoding_error"
    INVALID_PARAMS = "invalid_params"
    INTERNAL_ERROR = "internal_error"
    CLOSE_TRACK_ERROR = "close_track_error"
    WEBSOCKET_HANDSHAKE_FAILED = "websocket_handshake_failed"
    # Client-side codes (not sent by Cloudflare):
    HTTP_ERROR = "http_error"  # error status without a JSON errorCode (e.g. a proxy's HTML 502)
    INVALID_RESPONSE = "invalid_response"  # 2xx body that is not the documented shape
    CONNECTION_ERROR = "connection_error"  # no HTTP response at all (status 0)


def is_retryable_status(status: int) -> bool:
    """429 (rate limit: 50 calls/s per session), 425 (too early) and 5xx are worth another attempt."""
    return status in (425, 429) or 500 <= status <= 599


class SfuApiError(RealtimeApiError):
    """A failed API call: HTTP status (0 = no response), the spec's ``errorCode`` and whether to retry."""

    def __init__(self, status: int, code: str, description: str, retryable: bool) -> None:
        super().__init__(status, code, description, retryable)
        self.status = status
        self.code = str(code)
        self.description = clean_text(description)
        self.retryable = retryable

    def __str__(self) -> str:
        where = f"HTTP {self.status}" if self.status else "no HTTP response"
        return f"Realtime API error ({where}, {self.code}): {self.description}"

    def __repr__(self) -> str:
        return (
            f"SfuApiError(status={self.status}, code={self.code!r}, "
            f"description={self.description!r}, retryable={self.retryable})"
        )
