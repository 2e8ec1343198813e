"""How fast calls set up through one SFU address when the relay is the DTLS server and the callers are
muted (issue 17, "Remote addresses several calls share": turns).

The emulator answers the relay's offer with ``a=setup:active`` (as aiortc does), so the relay is the DTLS
server of each call. A muted caller sends nothing, so the SFU forwards nothing to the relay: a turn that
waits for the remote's first media (or ``turn_settle_s`` after the handshake) holds the SFU's address for
that long, one set-up after another.
"""

from __future__ import annotations

import asyncio
import time

import pytest

from tests.integration.test_emulator_shared_socket import (
    SPEECH,
    TaggedCall,
    _wait_for,
    anycast_rig,
    check_own_echo,
)

pytestmark = pytest.mark.integration


async def test_muted_callers_set_up_through_one_sfu_address_without_waiting_to_settle() -> None:
    """Six muted callers attach at once through an SFU on one socket to a relay on one port: every relay
    call's DTLS (the relay as server) completes, the turns at the SFU's address pass at each handshake's
    end, and the set-ups run well above the 0.7/s that a 1.5 s settle per turn allowed."""
    async with anycast_rig(sfu_rtcp_interval=60) as rig:
        relay, port = rig.relay, rig.port
        assert relay.manager is not None
        manager = relay.manager
        calls = [TaggedCall(rig.sfu, rig.api, f"muted-{i}", tag=i, rtcp_interval=60) for i in range(6)]
        try:
            start = time.perf_counter()
            await asyncio.gather(*(c.start() for c in calls))

            def relay_side_connected() -> bool:
                return all(
                    c.call_id in manager.calls
                    and manager.calls[c.call_id].peer.pc.connectionState == "connected"
                    and manager.calls[c.call_id].fast_path is not None
                    for c in calls
                )

            await _wait_for(relay_side_connected, within=30, what="every relay call connected")
            elapsed = time.perf_counter() - start
            rate = len(calls) / elapsed
            stats = port.stats()
            print(f"\nmuted set-ups: {len(calls)} in {elapsed:.2f} s = {rate:.2f}/s; {stats}")
            assert stats.held > 0 and stats.dtls_ambiguous == 0 and stats.delivery_errors == 0
            assert stats.turns_expired == 0
            assert rate > 2.0, f"{rate:.2f} set-ups/s through one SFU address with muted callers"
        finally:
            await rig.end(calls)


async def test_a_lost_relay_finished_is_recovered_while_other_calls_set_up_through_one_sfu_address() -> None:
    """Real aiortc on both sides: the relay's first ChangeCipherSpec+Finished toward the SFU's one address
    is lost. That call's turn has passed already (both Finished went by the relay), the next calls set up
    behind it; the SFU session retransmits its final flight after 1 s, the relay routes it to the call it
    belongs to (whose DTLS answers again), and every call connects and hears only itself."""
    async with anycast_rig() as rig:
        relay, port = rig.relay, rig.port
        assert relay.manager is not None
        manager = relay.manager
        demux, sfu_addr = port.demux, rig.sfu_media.address
        send = demux.send
        lost: list[bytes] = []

        def lossy(data: bytes, addr: tuple[str, int]) -> None:
            if not lost and addr == sfu_addr and data[:1] == b"\x14":  # CCS first: a server's last flight
                lost.append(data)
                return
            send(data, addr)

        demux.send = lossy
        calls = [TaggedCall(rig.sfu, rig.api, f"lost-{i}", tag=i) for i in range(4)]
        try:
            await asyncio.gather(*(c.start() for c in calls))
            await _wait_for(
                lambda: all(
                    c.call_id in manager.calls and manager.calls[c.call_id].fast_path is not None
                    for c in calls
                ),
                within=30,
                what="every relay call connected",
            )
            assert lost and demux.dtls_retransmits >= 1
            await asyncio.gather(*(c.speak(turns=1) for c in calls))
            await _wait_for(lambda: all(len(c.echoed()) >= sum(SPEECH.speech) for c in calls), 15, "echoes")
            for call in calls:
                check_own_echo(call)
            stats = port.stats()
            assert stats.dtls_ambiguous == 0 and stats.delivery_errors == 0 and stats.turns_expired == 0
        finally:
            demux.send = send
            await rig.end(calls)
