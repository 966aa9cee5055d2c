"""Graceful shutdown of one worker on SIGTERM.

`/readyz` turns 503 `draining` at once and new chats are refused with `overloaded`; replies in flight
get up to DRAIN_SECONDS to finish (then they are cancelled); open sockets then close with 1001 and the
worker exits. The gunicorn worker (`worker.py`) calls `run` instead of stopping at once.
"""

from __future__ import annotations

import asyncio
import contextlib
import time
from collections.abc import Awaitable, Callable
from typing import Any, Protocol

import structlog

from qwen_chat.readiness import WorkerStates

log = structlog.get_logger(__name__)

CLOSE_GOING_AWAY = 1001


class Connection(Protocol):
    @property
    def reply(self) -> asyncio.Task[None] | None:
        """The reply streaming now, if any."""

    def cancel(self) -> None: ...

    async def close(self, code: int, reason: str) -> None: ...


class Drain:
    def __init__(self, states: WorkerStates, drain_seconds: float) -> None:
        self._states = states
        self._drain_seconds = drain_seconds
        self.draining = False
        self.connections: set[Connection] = set()

    async def run(self) -> None:
        if self.draining:
            return
        self.draining = True  # from here on, new chats are refused
        self._states.publish("draining")
        started = time.monotonic()
        replies = {c: c.reply for c in self.connections if c.reply is not None and not c.reply.done()}
        log.info("drain_started", connections=len(self.connections), generating=len(replies))
        pending: set[asyncio.Task[None]] = set()
        if replies:
            _, pending = await asyncio.wait(set(replies.values()), timeout=self._drain_seconds)
        if pending:
            for connection, reply in replies.items():
                if reply in pending:
                    connection.cancel()
            # Give the cancelled replies a moment to send their `done`.
            await asyncio.wait(pending, timeout=2)
        for connection in list(self.connections):
            with contextlib.suppress(Exception):
                await connection.close(CLOSE_GOING_AWAY, "the server is shutting down")
        log.info("drain_finished", seconds=round(time.monotonic() - started, 2), cancelled=len(pending))


# The running app's drain, for the worker's SIGTERM handler (one app per worker process).
_handler: Callable[[], Awaitable[None]] | None = None


def register(handler: Callable[[], Awaitable[None]] | None) -> None:
    global _handler
    _handler = handler


def handler() -> Callable[[], Awaitable[Any]] | None:
    return _handler
