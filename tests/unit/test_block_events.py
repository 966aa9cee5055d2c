"""An engine's side of the KV events (`engine/block_events.py`) never troubles the decoding: a sender that
cannot push stops queueing, with one error, instead of holding every change in memory."""

from __future__ import annotations

from qwen_chat.engine.block_events import BlockEvents


def test_a_sender_that_cannot_connect_stops_queueing() -> None:
    events = BlockEvents("ipc:///" + "x" * 300)  # longer than any ipc socket path may be
    events._thread.join(timeout=10)
    assert not events._thread.is_alive()
    for _ in range(100):
        events.stored([1], None, [0, 1], 2)
    assert events._queue.qsize() == 0, "nothing is queued for a sender that is gone"
    events.close()  # and closing it does not hang
