"""The TURN credential endpoints, answered with the emulator's own STUN address.

There is no TURN relay in the emulator: on one machine every peer reaches every other directly, so the
``iceServers`` entry lists only ``stun:`` URLs (the emulator's STUN responder). It still carries a
username and credential, shaped like Cloudflare's (96 hex characters), so code that stores or revokes
credentials runs unchanged.
"""

from __future__ import annotations

import hmac
import secrets
import time
from collections import OrderedDict
from collections.abc import Callable

from splitrelay.contract.turn import GenerateIceServersRequest, IceServer, IceServersResponse
from splitrelay.emulator import errors
from splitrelay.emulator.config import EmulatorConfig
from splitrelay.emulator.errors import ApiError, EmulatorCode


class TurnService:
    """Credentials minted per TURN key, remembered (bounded) until they expire or are revoked."""

    def __init__(
        self,
        config: EmulatorConfig,
        stun_urls: Callable[[], tuple[str, ...]],
        *,
        clock: Callable[[], float] = time.time,
    ) -> None:
        self._config = config
        self._stun_urls = stun_urls
        self._clock = clock
        self._issued: OrderedDict[tuple[str, str], float] = OrderedDict()

    def authorize(self, key_id: str, token: str | None) -> None:
        expected = self._config.turn_keys.get(key_id)
        if (
            expected is None
            or token is None
            or not hmac.compare_digest(token.encode(), expected.reveal().encode())
        ):
            raise errors.unauthorized()

    def generate(self, key_id: str, request: GenerateIceServersRequest) -> IceServersResponse:
        now = self._clock()
        self._expire(now)
        limit = self._config.limits.max_turn_credentials
        if len(self._issued) >= limit:
            raise ApiError(
                429, EmulatorCode.RATE_LIMITED, f"at most {limit} live TURN credentials", retry_after=1
            )
        username = secrets.token_hex(48)
        self._issued[(key_id, username)] = now + request.ttl
        urls = self._stun_urls()
        return IceServersResponse(
            ice_servers=(IceServer(urls=urls, username=username, credential=secrets.token_hex(48)),)
        )

    def revoke(self, key_id: str, username: str) -> None:
        self._expire(self._clock())
        if self._issued.pop((key_id, username), None) is None:
            raise ApiError(404, EmulatorCode.NOT_FOUND, "username: no live credential of this TURN key")

    def live_credentials(self) -> int:
        self._expire(self._clock())
        return len(self._issued)

    def _expire(self, now: float) -> None:
        expired = [key for key, until in self._issued.items() if until <= now]
        for key in expired:
            del self._issued[key]
