"""The emulator's request-level errors: an HTTP status and the spec's ``errorCode``/``errorDescription``.

The spec names codes only for a few failures (``decoding_error``, ``invalid_params``, ``internal_error``,
``close_track_error``); statuses it leaves open (401, 404, 410, 425, 429) carry the emulator's own codes
below, in the same body shape, so :func:`splitrelay.contract.sfu_http.error_from_response` reads every
one.
"""

from __future__ import annotations

from enum import StrEnum
from typing import Any

from splitrelay.contract.api_error import ErrorCode
from splitrelay.contract.safety import clean_text
from splitrelay.contract.sfu import ErrorResponse


class EmulatorCode(StrEnum):
    UNAUTHORIZED = "unauthorized"
    NOT_FOUND = "not_found"
    SESSION_GONE = "session_gone"
    NOT_CONNECTED = "not_connected"
    RATE_LIMITED = "rate_limited"
    PAYLOAD_TOO_LARGE = "payload_too_large"
    NOT_EMULATED = "not_emulated"


class ApiError(Exception):
    """Raised anywhere in request handling; the HTTP layer turns it into a response and nothing else."""

    def __init__(self, status: int, code: str, description: str, *, retry_after: int | None = None) -> None:
        super().__init__(status, code, description)
        self.status = status
        self.code = str(code)
        self.description = clean_text(description)
        self.retry_after = retry_after

    def body(self) -> dict[str, Any]:
        return ErrorResponse(error_code=self.code, error_description=self.description).to_json()

    def __str__(self) -> str:
        return f"HTTP {self.status} {self.code}: {self.description}"


def invalid_params(description: str) -> ApiError:
    return ApiError(400, ErrorCode.INVALID_PARAMS, description)


def decoding_error(description: str) -> ApiError:
    return ApiError(400, ErrorCode.DECODING_ERROR, description)


def unauthorized() -> ApiError:
    # One answer for an unknown id and a wrong secret: the emulator does not reveal which ids exist.
    return ApiError(401, EmulatorCode.UNAUTHORIZED, "missing or wrong Bearer token for this app id")


def session_not_found(session_id: str) -> ApiError:
    return ApiError(404, EmulatorCode.NOT_FOUND, f"sessionId {clean_text(session_id, 64)}: no such session")


def session_gone(session_id: str) -> ApiError:
    return ApiError(
        410, EmulatorCode.SESSION_GONE, f"sessionId {clean_text(session_id, 64)}: the session has ended"
    )


def not_connected(what: str, waited: float) -> ApiError:
    return ApiError(425, EmulatorCode.NOT_CONNECTED, f"{what} is not connected after waiting {waited:g} s")


def rate_limited(limit: float) -> ApiError:
    return ApiError(
        429,
        EmulatorCode.RATE_LIMITED,
        f"more than {limit:g} API calls per second on this session",
        retry_after=1,
    )


def internal_error(description: str) -> ApiError:
    return ApiError(500, ErrorCode.INTERNAL_ERROR, description)
