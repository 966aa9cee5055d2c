"""SIGTERM drain of one worker: replies get DRAIN_SECONDS, then are cancelled; sockets close with 1001."""

from __future__ import annotations

import asyncio
from collections.abc import Callable
from typing import Any

from qwen_chat.errors import ErrorCode
from qwen_chat.runtime.drain import CLOSE_GOING_AWAY, Drain
from qwen_chat.runtime.readiness import WorkerStates


class Reply:
    """Finishes by itself after `seconds`, or at once when cancelled (as a ChatStream does)."""

    def __init__(self, seconds: float | None) -> None:
        self.closed = asyncio.Event()
        self.on_close: Callable[[Any], None] | None = None
        self.cancelled = False
        self.why: Any = None
        if seconds is not None:
            asyncio.get_running_loop().call_later(seconds, self.finish)

    def finish(self) -> None:
        self.closed.set()
        if self.on_close is not None:
            self.on_close(self)

    def cancel(self, why: Any = None) -> None:
        self.cancelled = True
        self.why = why
        self.finish()


class Socket:
    def __init__(self) -> None:
        self.closed_with: tuple[int, str] | None = None

    async def close(self, code: int, reason: str) -> None:
        self.closed_with = (code, reason)


def test_replies_that_finish_in_time_are_left_alone_and_late_ones_are_cancelled() -> None:
    async def scenario() -> None:
        states = WorkerStates(None, 1)
        states.publish("ready")
        drain = Drain(states, drain_seconds=0.3)
        quick, slow = Reply(0.05), Reply(None)
        drain.track(quick)
        drain.track(slow)
        socket = Socket()
        drain.connections.add(socket)
        await drain.run()
        assert drain.draining and states.pod().status == "draining"
        assert not quick.cancelled and slow.cancelled
        # Cut short by the server, it says why: a transport with no `cancelled` tells its client so.
        assert slow.why.code is ErrorCode.OVERLOADED and slow.why.message == "the server is shutting down"
        assert slow.why.retry_after is not None
        assert drain.replies == set()  # each reply left the set when it closed
        assert socket.closed_with == (CLOSE_GOING_AWAY, "the server is shutting down")

    asyncio.run(scenario())


def test_a_drain_with_nothing_in_flight_returns_at_once() -> None:
    async def scenario() -> float:
        drain = Drain(WorkerStates(None, 1), drain_seconds=30)
        loop = asyncio.get_running_loop()
        started = loop.time()
        await drain.run()
        return loop.time() - started

    assert asyncio.run(scenario()) < 1.0


def test_a_second_sigterm_during_a_drain_does_not_start_another() -> None:
    async def scenario() -> None:
        drain = Drain(WorkerStates(None, 1), drain_seconds=30)
        reply = Reply(None)
        drain.track(reply)
        first = asyncio.create_task(drain.run())
        await asyncio.sleep(0.05)
        await asyncio.wait_for(drain.run(), timeout=1)  # returns at once: the first drain waits for the reply
        assert not first.done() and not reply.cancelled
        reply.finish()
        await asyncio.wait_for(first, timeout=5)

    asyncio.run(scenario())


def test_while_draining_new_work_is_told_to_come_back_later() -> None:
    refusal = Drain(WorkerStates(None, 1), 30).refusal()
    assert refusal.code is ErrorCode.OVERLOADED and refusal.retry_after == 5.0
    assert refusal.handshake_response().status_code == 503
