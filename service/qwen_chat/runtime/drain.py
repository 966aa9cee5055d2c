"""Graceful shutdown of one worker on SIGTERM.

`/readyz` turns 503 `draining` at once and new chats are refused with `overloaded`; replies in flight
get up to DRAIN_SECONDS to finish (then they are cancelled, saying why: `/v1` streams end with that error,
having no `cancelled` to end with); open sockets then close with 1001 and the
worker exits. The gunicorn worker (`worker.py`) calls `run` (offered through `lifecycle.py`) instead of
stopping at once.
"""

from __future__ import annotations

import asyncio
import contextlib
import time
from collections.abc import Callable
from typing import Any, Protocol

import structlog

from qwen_chat.errors import ErrorCode, Refusal
from qwen_chat.metrics import DRAINING
from qwen_chat.runtime.readiness import WorkerStates

log = structlog.get_logger(__name__)

CLOSE_GOING_AWAY = 1001
# What a chat or a socket refused while draining is told to wait: another replica will have it.
RETRY_AFTER_SECONDS = 5.0


class Reply(Protocol):
    """A reply in flight on any transport (a `ChatStream`)."""

    closed: asyncio.Event
    on_close: Callable[[Any], None] | None

    def cancel(self, why: Refusal | None = None) -> None: ...


class Connection(Protocol):
    """An open WebSocket."""

    async def close(self, code: int, reason: str) -> None: ...


class Drain:
    def __init__(self, states: WorkerStates, drain_seconds: float) -> None:
        self._states = states
        self._drain_seconds = drain_seconds
        self.draining = False
        self.replies: set[Reply] = set()
        self.connections: set[Connection] = set()

    def refusal(self) -> Refusal:
        """What a new chat or socket gets while draining."""
        message = "the server is shutting down"
        return Refusal(ErrorCode.OVERLOADED, message, retry_after=RETRY_AFTER_SECONDS, cause=DRAINING)

    def track(self, reply: Reply) -> None:
        self.replies.add(reply)
        reply.on_close = self.replies.discard

    async def run(self) -> None:
        if self.draining:
            return
        self.draining = True  # from here on, new chats are refused
        self._states.publish("draining")
        started = time.monotonic()
        waits: dict[asyncio.Future[Any], Reply] = {
            asyncio.ensure_future(reply.closed.wait()): reply for reply in self.replies
        }
        log.info("drain_started", connections=len(self.connections), generating=len(waits))
        pending: set[asyncio.Future[Any]] = set()
        if waits:
            _, pending = await asyncio.wait(waits, timeout=self._drain_seconds)
        for wait in pending:
            waits[wait].cancel(self.refusal())
        if pending:  # give the cancelled replies a moment to send their last message
            _, still = await asyncio.wait(pending, timeout=2)
            for wait in still:
                wait.cancel()
        for connection in list(self.connections):
            with contextlib.suppress(Exception):
                await connection.close(CLOSE_GOING_AWAY, "the server is shutting down")
        log.info("drain_finished", seconds=round(time.monotonic() - started, 2), cancelled=len(pending))
