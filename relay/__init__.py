"""Regional relay: joins the caller's WebRTC media and carries Opus to inference over a small UDP protocol."""
