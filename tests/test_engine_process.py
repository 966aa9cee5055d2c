"""The engine in a child process (the default layout) against the tiny model: the replies of the thread
layout, and what the child's death must do: end its requests at once with an error, report LOADING with the
reason, start a fresh child, and give up after ENGINE_RESTART_LIMIT deaths. The same through `qwen-chat
serve` is in test_process_model.py."""

from __future__ import annotations

import asyncio
import os
import signal
import time
from collections.abc import Callable
from typing import Any

import psutil
import pytest

from qwen_chat.app import create_engine
from qwen_chat.engine.api.interface import (
    EngineError,
    EngineNotReady,
    EngineState,
    GenerationRequest,
    TextDelta,
)
from qwen_chat.engine.api.process import ProcessEngine
from qwen_chat.sampling_params import SamplingParams
from qwen_chat.settings import Settings
from tests.support.engine_events import collect as reply

pytestmark = pytest.mark.anyio

SAMPLED = SamplingParams(40, 0.7, 0.8, 1.05, seed=5)
GREEDY = SamplingParams(40, 0.0, 1.0, 1.0)
LONG = SamplingParams(4000, 0.0, 1.0, 1.0)


def process_engine(make_settings: Callable[..., Settings], **overrides: Any) -> ProcessEngine:
    engine = create_engine(make_settings(engine_process=True, **overrides))
    assert isinstance(engine, ProcessEngine)
    return engine


def request(
    engine: Any, request_id: str, params: SamplingParams, content: str = "hello engine"
) -> GenerationRequest:
    return GenerationRequest(
        request_id, engine.prompts.encode_chat([{"role": "user", "content": content}]), params
    )


async def wait_for_state(engine: Any, state: EngineState, timeout: float = 90) -> None:
    deadline = time.monotonic() + timeout
    while engine.state is not state:
        assert time.monotonic() < deadline, f"still {engine.state}, not {state}"
        await asyncio.sleep(0.05)


async def test_the_child_process_gives_the_replies_of_the_thread_layout(
    make_settings: Callable[..., Settings],
) -> None:
    thread = create_engine(make_settings(max_running=4))
    child = process_engine(make_settings, max_running=4)
    await asyncio.gather(thread.start(), child.start())
    pid = child.pid
    assert pid is not None and pid != os.getpid()
    try:
        for params in (GREEDY, SAMPLED):
            ours = await asyncio.gather(*(reply(child, request(child, f"c{i}", params)) for i in range(4)))
            theirs = await reply(thread, request(thread, "t", params))
            assert all(text == theirs[0] and done.completion_tokens == 40 for text, done in ours)
        # Leaving a stream early cancels it in the child; the slot is free for the next request at once.
        stream = child.generate(request(child, "long", LONG))
        async for event in stream:
            if isinstance(event, TextDelta):
                break
        await stream.aclose()
        assert child.stats.running == 0
        assert (await reply(child, request(child, "after", GREEDY)))[1].completion_tokens == 40
    finally:
        await asyncio.gather(thread.close(), child.close())
    assert child.state is EngineState.CLOSED
    assert not psutil.pid_exists(pid) or psutil.Process(pid).status() == psutil.STATUS_ZOMBIE


async def test_a_killed_engine_process_fails_its_requests_at_once_and_is_replaced(
    make_settings: Callable[..., Settings],
) -> None:
    engine = process_engine(make_settings, max_running=1, max_waiting=2)
    await engine.start()
    heard: list[tuple[EngineState, str]] = []
    engine.watch(lambda state, reason: heard.append((state, reason)))
    try:
        before = await reply(engine, request(engine, "before", GREEDY))
        running = engine.generate(request(engine, "running", LONG))
        waiting = engine.generate(request(engine, "waiting", LONG))
        await anext(running)  # Queued at position 0
        assert isinstance(await anext(running), TextDelta)
        await anext(waiting)  # Queued at position 1
        victim = engine.pid
        assert victim is not None
        os.kill(victim, signal.SIGKILL)
        killed = time.monotonic()
        for stream in (running, waiting):
            with pytest.raises(EngineError):
                async for _ in stream:
                    pass
        assert time.monotonic() - killed < 5, "requests of a dead engine must end promptly"
        assert heard[0][0] is EngineState.LOADING and "SIGKILL" in heard[0][1]
        with pytest.raises(EngineNotReady):
            await anext(engine.generate(request(engine, "meanwhile", GREEDY)))
        await wait_for_state(engine, EngineState.READY)
        assert heard[-1] == (EngineState.READY, "")
        assert engine.pid not in (None, victim)
        assert (await reply(engine, request(engine, "after", GREEDY)))[0] == before[0]
    finally:
        await engine.close()


async def test_past_the_restart_limit_the_engine_fails_for_good(
    make_settings: Callable[..., Settings],
) -> None:
    engine = process_engine(make_settings, engine_restart_limit=0)
    await engine.start()
    heard: list[tuple[EngineState, str]] = []
    engine.watch(lambda state, reason: heard.append((state, reason)))
    try:
        assert engine.pid is not None
        os.kill(engine.pid, signal.SIGKILL)
        await wait_for_state(engine, EngineState.FAILED, timeout=10)
        assert [state for state, _ in heard] == [EngineState.LOADING, EngineState.FAILED]
        assert "ENGINE_RESTART_LIMIT=0" in heard[-1][1]
        assert engine.pid is None
    finally:
        await engine.close()
