"""Media plane: RTP/RTCP helpers (rtp, rtcp, sdp), aiortc peer set-up (peer), and the SRTP fast path
(srtp_fastpath) that the relay and the SFU emulator share. Every private aiortc/aioice contact lives in
aiortc_internals.

Import from the submodules: this package imports nothing, so ``splitrelay.relay.media.rtp`` stays free of
aiortc.
"""
