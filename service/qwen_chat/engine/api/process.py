"""`ProcessEngine`: the worker's side of an engine whose core runs in a child process
(`engine/core/child.py`).

The worker keeps admission, queue positions, detokenization and every transport (`streams.py`); the child
decodes. Requests go down as `Submit`/`Cancel` frames, written from the event loop (a few per request);
steps come up on a reader thread, which hands each to the loop in one `call_soon_threadsafe`.

When the child dies (killed, out of memory, a device error), every request it held ends at once with an
error, the engine reports LOADING with the reason (so `/readyz` turns 503) and a fresh child starts. After
more than ENGINE_RESTART_LIMIT deaths within five minutes the engine reports FAILED and the worker exits, so
that Kubernetes restarts the pod with its back-off. The child exits by itself when the worker is gone: its
command pipe reads end-of-file.
"""

from __future__ import annotations

import asyncio
import contextlib
import os
import signal
import subprocess
import sys
import threading
import time
from collections import deque
from multiprocessing.connection import Connection
from typing import Any

import structlog

from qwen_chat import metrics
from qwen_chat.engine.api.channel import Channel, ChildEnds
from qwen_chat.engine.api.interface import EngineError, EngineState
from qwen_chat.engine.api.streams import StreamingEngine
from qwen_chat.engine.wire import (
    Cancel,
    Event,
    LoadFailed,
    ModelFacts,
    Ready,
    Shutdown,
    Step,
    Submit,
    decode_event,
    encode,
)
from qwen_chat.settings import Settings

log = structlog.get_logger(__name__)

RESTART_WINDOW_SECONDS = 300.0
# How long a stopping engine process may take to exit before it is killed.
_STOP_SECONDS = 30.0


def describe_exit(code: int) -> str:
    if code < 0:
        with contextlib.suppress(ValueError):
            return f"killed by {signal.Signals(-code).name}"
        return f"killed by signal {-code}"
    return f"exited with code {code}"


def _start_child(ends: ChildEnds) -> subprocess.Popen[bytes]:
    # The worker records the engine's metrics (metrics.EngineStepMetrics); the child writes no metric files.
    env = dict(os.environ)
    env.pop(metrics.MULTIPROC_ENV, None)
    return subprocess.Popen(
        [sys.executable, "-m", "qwen_chat.engine.core.child", str(ends.commands), str(ends.events)],
        pass_fds=(ends.commands, ends.events),
        env=env,
    )


class ProcessEngine(StreamingEngine):
    def __init__(self, settings: Settings) -> None:
        super().__init__(settings)
        self._process: subprocess.Popen[bytes] | None = None
        self._channel: Channel | None = None
        self._incarnation = 0  # events of an earlier child are ignored
        self._ready: asyncio.Future[ModelFacts] | None = None
        self._deaths: deque[float] = deque()
        self._restarting: asyncio.Task[None] | None = None

    @property
    def pid(self) -> int | None:
        """The engine process's, while one runs."""
        return self._process.pid if self._process is not None else None

    # --- lifecycle ---

    async def _load(self) -> tuple[ModelFacts, Any]:
        """The child loads the model; this process only the tokenizer, of the class the child's
        `AutoTokenizer` chose, without torch (`model/tokenizer.py`). The class the checkpoint names is loaded
        meanwhile, and kept when it is the child's (as on Qwen's own checkpoints)."""
        from qwen_chat.engine.model import tokenizer

        def ahead() -> tuple[str, Any]:  # the class the checkpoint names, while the child loads
            named = tokenizer.named_class(self._settings)
            return named, tokenizer.load_tokenizer(self._settings, named) if named else None

        guess = asyncio.ensure_future(asyncio.to_thread(ahead))
        try:
            facts = await self._spawn()
        finally:
            await asyncio.gather(guess, return_exceptions=True)
        if not guess.exception() and guess.result()[0] == facts.tokenizer_class:
            return facts, guess.result()[1]
        loaded = await asyncio.to_thread(tokenizer.load_tokenizer, self._settings, facts.tokenizer_class)
        return facts, loaded

    async def _spawn(self) -> ModelFacts:
        loop = asyncio.get_running_loop()
        channel = Channel.open()
        ends = channel.child
        try:
            process = await asyncio.to_thread(_start_child, ends)
        except OSError as exc:
            channel.release_child_ends()
            channel.close_commands()
            channel.events.close()
            raise EngineError(f"the engine process could not start: {exc}") from exc
        channel.release_child_ends()
        self._incarnation += 1
        self._process, self._channel = process, channel
        self._ready = ready = loop.create_future()
        threading.Thread(
            target=self._read_events,
            args=(loop, self._incarnation, process, channel.events),
            name="engine-events",
            daemon=True,
        ).start()
        log.info("engine_process_started", pid=process.pid, engine=self.name)
        with contextlib.suppress(OSError):  # it died at once: its exit fails `ready`
            channel.commands.send_bytes(self._settings.model_dump_json().encode())
        facts: ModelFacts = await ready
        return facts

    async def _shut_down(self) -> None:
        if self._restarting is not None:
            self._restarting.cancel()
            await asyncio.gather(self._restarting, return_exceptions=True)
        process, channel = self._process, self._channel
        self._channel = None
        if channel is not None:
            with contextlib.suppress(OSError):
                channel.commands.send_bytes(encode(Shutdown()))
            channel.close_commands()
        if process is None:
            return
        try:
            await asyncio.to_thread(process.wait, _STOP_SECONDS)
        except subprocess.TimeoutExpired:
            log.warning(
                "engine_process_killed", pid=process.pid, reason=f"not stopped in {_STOP_SECONDS:.0f} s"
            )
            process.kill()
            await asyncio.to_thread(process.wait)

    def _close_commands(self) -> None:
        channel, self._channel = self._channel, None
        if channel is not None:
            channel.close_commands()

    # --- requests ---

    def _submit(self, request: Submit) -> None:
        self._send(request)

    def _send_cancel(self, request_id: str) -> None:
        self._send(Cancel(request_id))

    def _send(self, command: Submit | Cancel) -> None:
        channel = self._channel
        if channel is None:
            raise EngineError("the engine process is not running")
        channel.commands.send_bytes(encode(command))

    # --- events, from the reader thread to the loop ---

    def _read_events(
        self,
        loop: asyncio.AbstractEventLoop,
        incarnation: int,
        process: subprocess.Popen[bytes],
        events: Connection,
    ) -> None:
        try:
            while True:
                try:
                    event = decode_event(events.recv_bytes())
                except (EOFError, OSError):
                    break
                loop.call_soon_threadsafe(self._on_event, incarnation, event)
        finally:
            events.close()
        reason = describe_exit(process.wait())
        with contextlib.suppress(RuntimeError):  # the loop is closed: the worker is exiting anyway
            loop.call_soon_threadsafe(self._on_exit, incarnation, reason)

    def _on_event(self, incarnation: int, event: Event) -> None:
        if incarnation != self._incarnation:
            return
        if isinstance(event, Step):
            self._on_step(event)
        elif self._ready is not None and not self._ready.done():
            if isinstance(event, Ready):
                self._ready.set_result(event.facts)
            elif isinstance(event, LoadFailed):
                self._ready.set_exception(EngineError(f"the engine could not load the model: {event.reason}"))
                self._close_commands()  # the child exits at once

    def _on_exit(self, incarnation: int, reason: str) -> None:
        if incarnation != self._incarnation:
            return
        self._process = None
        self._close_commands()
        if self._ready is not None and not self._ready.done():
            self._ready.set_exception(EngineError(f"the engine process stopped while loading ({reason})"))
            return
        if self._state is not EngineState.READY:
            return  # closing
        log.error(
            "engine_process_died",
            reason=reason,
            running=len(self._streams),
            waiting=len(self._waiting),
            action="restarting it",
        )
        metrics.ENGINE_RESTARTS.labels(self._settings.model_name).inc()
        self._set_state(EngineState.LOADING, f"the engine process stopped ({reason}); restarting it")
        self._fail_all(EngineError(f"the engine process stopped ({reason})"))
        self._restarting = asyncio.ensure_future(self._restart())

    async def _restart(self) -> None:
        limit = self._settings.engine_restart_limit
        while self._state is EngineState.LOADING:
            now = time.monotonic()
            self._deaths.append(now)
            while now - self._deaths[0] > RESTART_WINDOW_SECONDS:
                self._deaths.popleft()
            if len(self._deaths) > limit:
                reason = (
                    f"the engine process stopped {len(self._deaths)} times in {RESTART_WINDOW_SECONDS:.0f} s "
                    f"(ENGINE_RESTART_LIMIT={limit})"
                )
                log.error("engine_failed", reason=reason)
                self._set_state(EngineState.FAILED, reason)
                return
            try:
                facts = await self._spawn()
            except EngineError as exc:
                log.error("engine_restart_failed", error=str(exc))
                continue
            if self._process is None:  # it died again before this task resumed
                continue
            self._facts = facts
            log.info("engine_process_restarted", pid=self.pid)
            self._set_state(EngineState.READY)
