"""Both engines against the tiny model: streaming, sampling parameters, stop, cancel, queueing; and what
continuous batching must keep: a request's output does not depend on what else is in the batch."""

from __future__ import annotations

import asyncio
import dataclasses
import json
from collections.abc import AsyncIterator, Callable
from typing import Any

import pytest
import torch
from prometheus_client import REGISTRY

from qwen_chat.app import create_engine
from qwen_chat.engine.api.interface import (
    EngineNotReady,
    EngineOverloaded,
    EngineState,
    Finished,
    GenerationRequest,
    Queued,
    TextDelta,
    UserAtCapacity,
)
from qwen_chat.engine.api.queued import QueuedEngine
from qwen_chat.engine.model.tokenizer import load_tokenizer
from qwen_chat.engine.wire import ModelFacts
from qwen_chat.sampling_params import SamplingParams
from qwen_chat.settings import Settings
from tests.support.engine_events import collect

pytestmark = pytest.mark.anyio

GREEDY = SamplingParams(max_new_tokens=24, temperature=0.0, top_p=1.0, repetition_penalty=1.0)


ENGINES = ["batch", "simple"]


def make_engine(make_settings: Callable[..., Settings], kind: str, **overrides: Any) -> QueuedEngine:
    engine = create_engine(make_settings(engine=kind, **overrides))
    assert isinstance(engine, QueuedEngine) and engine.name == kind
    return engine


@pytest.fixture(params=ENGINES)
async def engine(
    request: pytest.FixtureRequest, make_settings: Callable[..., Settings]
) -> AsyncIterator[QueuedEngine]:
    engine = make_engine(make_settings, request.param, max_running=1, max_waiting=1)
    await engine.start()
    yield engine
    await engine.close()


def request(
    engine: QueuedEngine, request_id: str, params: SamplingParams = GREEDY, **kw: Any
) -> GenerationRequest:
    ids = engine.prompts.encode_chat([{"role": "user", "content": "hello engine"}])
    return GenerationRequest(request_id, ids, params, **kw)


async def test_greedy_is_deterministic_and_respects_max_new_tokens(engine: QueuedEngine) -> None:
    text1, fin1 = await collect(engine, request(engine, "a"))
    text2, fin2 = await collect(engine, request(engine, "b"))
    assert text1 == text2 != ""
    assert fin1.reason == fin2.reason == "length"
    assert fin1.completion_tokens == fin2.completion_tokens == 24
    assert fin1.prompt_tokens == len(request(engine, "x").prompt_ids)


async def test_deltas_that_pile_up_reach_a_slow_consumer_as_one(engine: QueuedEngine) -> None:
    """A consumer that falls behind (a busy event loop) gets the waiting deltas merged, not one by one."""
    expected, _ = await collect(engine, request(engine, "prompt"))
    events = engine.generate(request(engine, "slow", SamplingParams(24, 0.0, 1.0, 1.0)))
    assert isinstance(await anext(events), Queued)
    for _ in range(600):  # the whole reply is generated meanwhile (about 24 ms on the tiny model)
        if engine.stats.running == 0:
            break
        await asyncio.sleep(0.05)
    deltas = []
    async for event in events:
        if isinstance(event, TextDelta):
            deltas.append(event)
        else:
            assert isinstance(event, Finished) and event.completion_tokens == 24
    assert "".join(d.text for d in deltas) == expected
    assert len(deltas) == 1 and deltas[0].completion_tokens == 24


async def test_seeded_sampling_reproduces_and_differs_by_seed(engine: QueuedEngine) -> None:
    def sampled(seed: int, temperature: float = 1.0) -> SamplingParams:
        return SamplingParams(24, temperature, 0.95, 1.0, seed)

    one, _ = await collect(engine, request(engine, "a", sampled(1)))
    again, _ = await collect(engine, request(engine, "b", sampled(1)))
    other, _ = await collect(engine, request(engine, "c", sampled(2)))
    greedy, _ = await collect(engine, request(engine, "d"))
    assert one == again
    assert one != other
    assert one != greedy


async def test_repetition_penalty_changes_the_output(engine: QueuedEngine) -> None:
    plain, _ = await collect(engine, request(engine, "a", SamplingParams(64, 0.0, 1.0, 1.0)))
    penalised, _ = await collect(engine, request(engine, "b", SamplingParams(64, 0.0, 1.0, 2.0)))
    assert plain != penalised


async def test_stop_token_ends_with_stop(engine: QueuedEngine) -> None:
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


async def test_abort_stops_within_a_decode_step(engine: QueuedEngine) -> None:
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


async def _eventually_idle(engine: QueuedEngine) -> bool:
    for _ in range(100):
        if engine.stats.running == 0:
            return True
        await asyncio.sleep(0.01)
    return False


async def test_queue_positions_and_overload(engine: QueuedEngine) -> None:
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


async def test_abort_while_waiting_finishes_cancelled(engine: QueuedEngine) -> None:
    first = engine.generate(request(engine, "first", SamplingParams(2000, 0.0, 1.0, 1.0)))
    await anext(first)
    second = engine.generate(request(engine, "second"))
    await anext(second)
    engine.abort("second")
    events = [event async for event in second]
    assert events == [Finished("cancelled", events[0].prompt_tokens, 0, 0.0, 0.0)]  # type: ignore[union-attr]
    await first.aclose()


async def test_one_user_is_capped_and_waits_its_turn_behind_the_others(
    make_settings: Callable[..., Settings],
) -> None:
    """MAX_USER_REQUESTS bounds one user's replies at once; the line serves users in turn, so a request from
    a second user overtakes the flood's tail."""
    engine = make_engine(make_settings, "batch", max_running=1, max_waiting=8, max_user_requests=4)
    await engine.start()
    try:
        long = SamplingParams(2000, 0.0, 1.0, 1.0)
        short = dataclasses.replace(GREEDY, max_new_tokens=2)
        running = engine.generate(request(engine, "flood-0", long, user="flood"))
        assert await anext(running) == Queued(0)
        flood = [engine.generate(request(engine, f"flood-{n}", short, user="flood")) for n in (1, 2, 3)]
        assert [await anext(events) for events in flood] == [Queued(1), Queued(2), Queued(3)]
        with pytest.raises(UserAtCapacity, match="4 replies running or waiting"):
            await anext(engine.generate(request(engine, "flood-4", short, user="flood")))
        bob = engine.generate(request(engine, "bob", short, user="bob"))
        assert await anext(bob) == Queued(2), "after the flood's next request, not after all three"
        anonymous = engine.generate(request(engine, "anon", short))  # no user: never capped
        assert isinstance(await anext(anonymous), Queued)
        order: list[str] = []

        async def finish(name: str, events: AsyncIterator[Any]) -> None:
            async for event in events:
                if isinstance(event, Finished):
                    order.append(name)

        await running.aclose()
        await asyncio.gather(
            *(finish(f"flood-{n}", events) for n, events in zip((1, 2, 3), flood, strict=True)),
            finish("bob", bob),
            finish("anon", anonymous),
        )
        assert order.index("bob") < order.index("flood-2") < order.index("flood-3"), order
        assert order[0] == "flood-1", order
        # Every reply counted against the cap ended with its stream: the user has all four again.
        again = [engine.generate(request(engine, f"again-{n}", short, user="flood")) for n in range(4)]
        assert [type(await anext(events)) for events in again] == [Queued] * 4
        for events in again:
            await events.aclose()
    finally:
        await engine.close()


@pytest.mark.parametrize("kind", ENGINES)
async def test_not_ready_before_start(make_settings: Callable[..., Settings], kind: str) -> None:
    engine = make_engine(make_settings, kind)
    assert engine.state is EngineState.LOADING
    with pytest.raises(EngineNotReady):
        await anext(engine.generate(GenerationRequest("r", [1, 2, 3], GREEDY)))
    await engine.close()


@pytest.mark.parametrize("kind", ENGINES)
async def test_close_frees_the_model(make_settings: Callable[..., Settings], kind: str) -> None:
    engine = make_engine(make_settings, kind)
    await engine.start()
    assert engine.state is EngineState.READY and engine.stats.load_seconds is not None
    await engine.close()
    assert engine.state is EngineState.CLOSED and engine._loaded is None


# --- continuous batching: what sharing a batch must not change ---------------------------------------------

PROMPTS = [
    "hello engine",
    "tell me a long story about a dragon and a castle",
    "1 2 3 4 5 6 7 8",
    "ok",
]


@pytest.fixture
async def batch(make_settings: Callable[..., Settings]) -> AsyncIterator[QueuedEngine]:
    engine = make_engine(make_settings, "batch", max_running=4, max_waiting=8)
    await engine.start()
    yield engine
    await engine.close()


def chat_request(
    engine: QueuedEngine, request_id: str, content: str, params: SamplingParams
) -> GenerationRequest:
    return GenerationRequest(
        request_id, engine.prompts.encode_chat([{"role": "user", "content": content}]), params
    )


async def run_together(engine: QueuedEngine, requests: list[GenerationRequest]) -> list[tuple[str, Finished]]:
    return list(await asyncio.gather(*(collect(engine, req) for req in requests)))


async def test_greedy_output_does_not_depend_on_the_rest_of_the_batch(batch: QueuedEngine) -> None:
    params = SamplingParams(max_new_tokens=32, temperature=0.0, top_p=1.0, repetition_penalty=1.0)
    alone = [
        await collect(batch, chat_request(batch, f"alone-{i}", p, params)) for i, p in enumerate(PROMPTS)
    ]
    together = await run_together(
        batch, [chat_request(batch, f"together-{i}", p, params) for i, p in enumerate(PROMPTS)]
    )
    assert [text for text, _ in together] == [text for text, _ in alone]
    # Also when the others join while the first is already decoding.
    first = asyncio.create_task(collect(batch, chat_request(batch, "early", PROMPTS[0], params)))
    await asyncio.sleep(0.02)
    late = await run_together(
        batch, [chat_request(batch, f"late-{i}", p, params) for i, p in enumerate(PROMPTS[1:])]
    )
    assert [(await first)[0], *(text for text, _ in late)] == [text for text, _ in alone]


async def test_mixed_sampling_in_one_batch_matches_each_request_alone(batch: QueuedEngine) -> None:
    mixed = [
        SamplingParams(24, 0.0, 1.0, 1.0),  # greedy
        SamplingParams(24, 0.9, 0.95, 1.0, seed=7),  # sampled
        SamplingParams(24, 0.0, 1.0, 1.5),  # greedy with a repetition penalty
        SamplingParams(24, 1.3, 0.6, 1.2, seed=11),  # everything at once
        SamplingParams(24, 0.0, 1.0, 1.0, presence_penalty=2.0, frequency_penalty=1.0),  # generated only
        SamplingParams(24, 0.7, 1.0, 1.0, seed=5, top_k=3, min_p=0.2),  # top_k and min_p
    ]
    alone = [
        await collect(batch, chat_request(batch, f"a{i}", PROMPTS[i % 4], p)) for i, p in enumerate(mixed)
    ]
    together = await run_together(
        batch, [chat_request(batch, f"t{i}", PROMPTS[i % 4], p) for i, p in enumerate(mixed)]
    )
    assert [text for text, _ in together] == [text for text, _ in alone]
    # The settings really act: each differs from plain greedy on the same prompt.
    others = range(1, len(mixed))
    greedy = [await collect(batch, chat_request(batch, f"g{i}", PROMPTS[i % 4], mixed[0])) for i in others]
    assert all(g[0] != a[0] for g, a in zip(greedy, alone[1:], strict=True))


async def test_requests_that_outgrow_a_full_cache_wait_or_are_resumed_never_fail(
    make_settings: Callable[..., Settings],
) -> None:
    # A cache of about one longest request (the floor) and eight requests that together need six times it:
    # some wait, and some running ones are paused for lack of cache and resumed later.
    engine = make_engine(
        make_settings, "batch", max_running=8, max_waiting=8, max_input_tokens=64, max_new_tokens=128,
        kv_cache_tokens=1,
    )  # fmt: skip
    await engine.start()
    try:
        params = SamplingParams(128, 0.7, 0.8, 1.05, seed=3)
        alone = await collect(engine, chat_request(engine, "alone", PROMPTS[1], params))
        crowded = await run_together(
            engine, [chat_request(engine, f"c{i}", PROMPTS[1], params) for i in range(8)]
        )
        assert all(
            finished.reason == "length" and finished.completion_tokens == 128 for _, finished in crowded
        )
        assert all(text == alone[0] for text, _ in crowded), "a paused and resumed request keeps its reply"
        # What /metrics says of it: requests were paused, and each step was timed and sized.
        model = {"model": engine._settings.model_name}
        assert (REGISTRY.get_sample_value("qwen_chat_engine_preemptions_total", model) or 0) > 0
        steps = REGISTRY.get_sample_value("qwen_chat_engine_step_seconds_count", model) or 0
        assert (
            steps >= 128
            and (REGISTRY.get_sample_value("qwen_chat_engine_batch_size_sum", model) or 0) > steps
        )
    finally:
        await engine.close()


async def test_both_engines_give_the_same_reply_for_the_same_seed(
    batch: QueuedEngine, make_settings: Callable[..., Settings]
) -> None:
    simple = make_engine(make_settings, "simple")
    await simple.start()
    try:
        card = SamplingParams(20, 0.6, 0.95, 1.0, 3, top_k=20, min_p=0.05, presence_penalty=1.5)
        greedy_penalised = SamplingParams(20, 0.0, 1.0, 1.3, frequency_penalty=0.7)
        for params in (SamplingParams(20, 0.8, 0.9, 1.1, seed=3), card, greedy_penalised):
            ours = await collect(batch, chat_request(batch, "b", PROMPTS[1], params))
            theirs = await collect(simple, chat_request(simple, "s", PROMPTS[1], params))
            assert ours[0] == theirs[0] and ours[1].completion_tokens == theirs[1].completion_tokens
    finally:
        await simple.close()


async def test_both_engines_mask_to_a_grammar_and_report_the_same_logprobs(
    batch: QueuedEngine, make_settings: Callable[..., Settings]
) -> None:
    schema = {"type": "object", "properties": {"n": {"type": "integer", "minimum": 0, "maximum": 9}}}
    schema |= {"required": ["n"], "additionalProperties": False}
    constraint = json.dumps({"type": "json_schema", "json_schema": {"schema": schema}})
    simple = make_engine(make_settings, "simple")
    await simple.start()
    try:
        replies = []
        for engine in (batch, simple):
            req = chat_request(engine, "g", PROMPTS[1], SamplingParams(30, 0.8, 0.9, 1.1, seed=5))
            req = dataclasses.replace(req, constraint=constraint, top_logprobs=3)
            logprobs: list[Any] = []
            text = ""
            async for event in engine.generate(req):
                if isinstance(event, TextDelta):
                    text, logprobs = text + event.text, logprobs + list(event.logprobs)
                elif isinstance(event, Finished):
                    assert event.reason == "stop"
            assert 0 <= json.loads(text)["n"] <= 9
            assert [len(entry.top_ids) for _, entry in logprobs] == [3] * len(logprobs)
            replies.append((text, [token for token, _ in logprobs], [e.logprob for _, e in logprobs]))
        (text, tokens, values), (text2, tokens2, values2) = replies
        assert (text, tokens) == (text2, tokens2)
        assert values == pytest.approx(values2, abs=1e-4)
    finally:
        await simple.close()


async def test_cancel_frees_the_slot_for_the_next_request_at_once(
    make_settings: Callable[..., Settings],
) -> None:
    engine = make_engine(make_settings, "batch", max_running=1, max_waiting=4)
    await engine.start()
    try:
        long = SamplingParams(2000, 0.0, 1.0, 1.0)
        first = engine.generate(chat_request(engine, "first", PROMPTS[0], long))
        assert await anext(first) == Queued(0)
        second = engine.generate(chat_request(engine, "second", PROMPTS[1], GREEDY))
        assert await anext(second) == Queued(1)
        while not isinstance(await anext(first), TextDelta):
            pass
        engine.abort("first")
        events = [event async for event in first]
        assert isinstance(events[-1], Finished) and events[-1].reason == "cancelled"
        assert events[-1].completion_tokens < 2000
        # The waiting request took the slot; it runs to its own end.
        done = [event async for event in second]
        assert (
            isinstance(done[-1], Finished)
            and done[-1].reason == "length"
            and done[-1].completion_tokens == 24
        )
        assert engine.stats.running == 0 and engine.stats.waiting == 0
        # Nothing of the cancelled request is left in the engine or the sampler.
        assert not engine._streams and engine._core._sampler.active == 0  # type: ignore[attr-defined]
    finally:
        await engine.close()


async def test_many_concurrent_requests_all_finish(batch: QueuedEngine) -> None:
    params = SamplingParams(16, 0.7, 0.9, 1.05, seed=1)
    results = await run_together(
        batch, [chat_request(batch, f"r{i}", PROMPTS[i % 4], params) for i in range(12)]
    )
    assert all(fin.reason in ("stop", "length") for _, fin in results)
    assert batch.stats.running == 0 and batch.stats.waiting == 0


async def test_more_slots_than_a_step_takes_tokens_still_decode(
    make_settings: Callable[..., Settings],
) -> None:
    """MAX_RUNNING above MAX_BATCH_TOKENS: the manager schedules at most MAX_BATCH_TOKENS rows a step, and
    the sampler's per-step arguments fit what the manager holds for them."""
    engine = make_engine(make_settings, "batch", max_running=64, max_batch_tokens=16, max_waiting=8)
    await engine.start()
    try:
        params = SamplingParams(8, 0.7, 0.9, 1.05, seed=1)
        results = await run_together(
            engine, [chat_request(engine, f"r{i}", PROMPTS[i], params) for i in range(2)]
        )
        assert [fin.completion_tokens for _, fin in results] == [8, 8]
    finally:
        await engine.close()


class _ReportsThreeSlots(QueuedEngine):
    """A worker side whose core (not run here) reports 3 slots, whatever the settings foresaw."""

    async def _load(self) -> tuple[ModelFacts, Any]:
        facts = ModelFacts(64, [0], 32, "cpu", "float32", max_running=3)
        return facts, load_tokenizer(self._settings)

    def _run(self, job: Any) -> None: ...
    def _cancel_running(self, job: Any) -> None: ...
    async def _shut_down(self) -> None: ...


async def test_the_worker_admits_as_many_requests_as_its_core_decodes(
    make_settings: Callable[..., Settings],
) -> None:
    """The slot count is computed once, by the core (`ModelFacts.max_running`): the worker's estimate from
    the settings gives way to it, and so does the per-user cap derived from it."""
    engine = _ReportsThreeSlots(make_settings(max_running=0, max_user_requests=0))
    assert engine.max_running != 3
    await engine.start()
    try:
        assert engine.max_running == 3 and engine.max_per_user == 1
    finally:
        await engine.close()
