"""A local Cloudflare Realtime emulator: the SFU and TURN credential API over real WebRTC, on one machine.

Like miniflare for Workers, it lets the edge, the relay and the whole stack run and be tested offline:
the HTTP API follows the Cloudflare Realtime spec (models from :mod:`splitrelay.contract.sfu`),
each session is
a real aiortc peer connection, and Opus RTP moves between sessions on the relay's SRTP fast path.
See docs/emulator.md for what is and is not emulated.
"""
