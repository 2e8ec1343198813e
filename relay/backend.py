"""What the control API needs from whoever owns the calls: the in-process manager (relay/manager.py) or
the pool of per-core worker processes (relay/workers.py). No HTTP here: the API (relay/control.py) only
parses requests into the contract's dataclasses and hands them on."""

from __future__ import annotations

from typing import Any, Protocol

from splitrelay.contract.control import AttachRequest, AttachResult


class CallBackend(Protocol):
    @property
    def draining(self) -> bool: ...

    async def attach(self, request: AttachRequest) -> AttachResult: ...

    async def close(self, call_id: str, reason: str) -> dict[str, Any] | None: ...

    async def list_calls(self) -> list[dict[str, Any]]: ...

    async def get_call(self, call_id: str) -> dict[str, Any] | None: ...

    async def drain(self) -> int: ...

    async def undrain(self) -> int: ...

    async def metrics_text(self) -> bytes: ...


class AttachRefused(Exception):
    """The backend cannot take this call; `status` says why (409 duplicate, 400 bad SDP, 503 draining)."""

    def __init__(self, status: int, message: str) -> None:
        super().__init__(message)
        self.status = status
        self.message = message
