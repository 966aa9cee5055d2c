"""SimpleEngine against the tiny model: streaming, sampling parameters, stop, cancel, queueing."""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator, Callable
from typing import Any

import pytest
import torch

from qwen_chat.engine import (
    EngineNotReady,
    EngineOverloaded,
    EngineState,
    Finished,
    GenerationRequest,
    Queued,
    SamplingParams,
    TextDelta,
)
from qwen_chat.settings import Settings
from qwen_chat.simple_engine import SimpleEngine

pytestmark = pytest.mark.anyio

GREEDY = SamplingParams(max_new_tokens=24, temperature=0.0, top_p=1.0, repetition_penalty=1.0)


@pytest.fixture
async def engine(make_settings: Callable[..., Settings]) -> AsyncIterator[SimpleEngine]:
    engine = SimpleEngine(make_settings(max_running=1, max_waiting=1))
    await engine.start()
    yield engine
    await engine.close()


def request(
    engine: SimpleEngine, request_id: str, params: SamplingParams = GREEDY, **kw: Any
) -> GenerationRequest:
    ids = engine.prompts.encode_chat([{"role": "user", "content": "hello engine"}])
    return GenerationRequest(request_id, ids, params, **kw)


async def collect(engine: SimpleEngine, req: GenerationRequest) -> tuple[str, Finished]:
    text = ""
    async for event in engine.generate(req):
        if isinstance(event, TextDelta):
            text += event.text
        elif isinstance(event, Finished):
            return text, event
    raise AssertionError("no Finished event")


async def test_greedy_is_deterministic_and_respects_max_new_tokens(engine: SimpleEngine) -> None:
    text1, fin1 = await collect(engine, request(engine, "a"))
    text2, fin2 = await collect(engine, request(engine, "b"))
    assert text1 == text2 != ""
    assert fin1.reason == fin2.reason == "length"
    assert fin1.completion_tokens == fin2.completion_tokens == 24
    assert fin1.prompt_tokens == len(request(engine, "x").prompt_ids)


async def test_seeded_sampling_reproduces_and_differs_by_seed(engine: SimpleEngine) -> None:
    def sampled(seed: int, temperature: float = 1.0) -> SamplingParams:
        return SamplingParams(24, temperature, 0.95, 1.0, seed)

    one, _ = await collect(engine, request(engine, "a", sampled(1)))
    again, _ = await collect(engine, request(engine, "b", sampled(1)))
    other, _ = await collect(engine, request(engine, "c", sampled(2)))
    greedy, _ = await collect(engine, request(engine, "d"))
    assert one == again
    assert one != other
    assert one != greedy


async def test_repetition_penalty_changes_the_output(engine: SimpleEngine) -> None:
    plain, _ = await collect(engine, request(engine, "a", SamplingParams(64, 0.0, 1.0, 1.0)))
    penalised, _ = await collect(engine, request(engine, "b", SamplingParams(64, 0.0, 1.0, 2.0)))
    assert plain != penalised


async def test_stop_token_ends_with_stop(engine: SimpleEngine) -> None:
    # Greedy output is deterministic: make its 5th token a stop token and the reply must end there.
    ids = request(engine, "x").prompt_ids
    loaded = engine._loaded
    assert loaded is not None
    out = loaded.model.generate(
        input_ids=torch.tensor([ids]), max_new_tokens=5, do_sample=False, eos_token_id=None
    )
    fifth = int(out[0, len(ids) + 4])
    _, finished = await collect(engine, request(engine, "s", stop_token_ids=frozenset({fifth})))
    assert finished.reason == "stop"
    assert finished.completion_tokens <= 5


async def test_abort_stops_within_a_decode_step(engine: SimpleEngine) -> None:
    long = SamplingParams(2000, 0.0, 1.0, 1.0)
    tokens_at_abort = 0
    async for event in engine.generate(request(engine, "long", long)):
        if isinstance(event, TextDelta) and event.completion_tokens >= 10 and not tokens_at_abort:
            tokens_at_abort = event.completion_tokens
            engine.abort("long")
        if isinstance(event, Finished):
            assert event.reason == "cancelled"
            # The thread may have produced a token or two while the abort was on its way.
            assert event.completion_tokens <= tokens_at_abort + 3
    assert engine.stats.running == 0 or await _eventually_idle(engine)


async def _eventually_idle(engine: SimpleEngine) -> bool:
    for _ in range(100):
        if engine.stats.running == 0:
            return True
        await asyncio.sleep(0.01)
    return False


async def test_queue_positions_and_overload(engine: SimpleEngine) -> None:
    long = SamplingParams(2000, 0.0, 1.0, 1.0)
    first = engine.generate(request(engine, "first", long))
    assert await anext(first) == Queued(0)
    second = engine.generate(request(engine, "second"))
    assert await anext(second) == Queued(1)
    assert engine.stats.running == 1 and engine.stats.waiting == 1
    with pytest.raises(EngineOverloaded):
        await anext(engine.generate(request(engine, "third")))
    # Leaving an iterator early aborts its request and lets the waiting one run.
    await first.aclose()
    events = [event async for event in second]
    assert isinstance(events[-1], Finished) and events[-1].reason == "length"
    assert events[-1].queue_seconds > 0


async def test_abort_while_waiting_finishes_cancelled(engine: SimpleEngine) -> None:
    first = engine.generate(request(engine, "first", SamplingParams(2000, 0.0, 1.0, 1.0)))
    await anext(first)
    second = engine.generate(request(engine, "second"))
    await anext(second)
    engine.abort("second")
    events = [event async for event in second]
    assert events == [Finished("cancelled", events[0].prompt_tokens, 0, 0.0, 0.0)]  # type: ignore[union-attr]
    await first.aclose()


async def test_not_ready_before_start(make_settings: Callable[..., Settings]) -> None:
    engine = SimpleEngine(make_settings())
    assert engine.state is EngineState.LOADING
    with pytest.raises(EngineNotReady):
        await anext(engine.generate(GenerationRequest("r", [1, 2, 3], GREEDY)))
    await engine.close()


async def test_close_frees_the_model(make_settings: Callable[..., Settings]) -> None:
    engine = SimpleEngine(make_settings())
    await engine.start()
    assert engine.state is EngineState.READY and engine.stats.load_seconds is not None
    await engine.close()
    assert engine.state is EngineState.CLOSED and engine._loaded is None
