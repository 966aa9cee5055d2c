"""The /ws transport: `router.py` (the endpoint: handshake checks, the frame loop, close codes),
`session.py` (one connection's conversation and its one reply at a time), `protocol.py` (the messages)."""
