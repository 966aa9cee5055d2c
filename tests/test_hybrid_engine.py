"""The hybrid core (Qwen3.5/3.6, Qwen3-Next) against transformers' own `generate` on the same tiny checkpoints:
alone, batched with requests of other lengths arriving at other times, after cancels, seeded, and resumed
from a kept conversation state."""

from __future__ import annotations

import asyncio
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest
from prometheus_client import REGISTRY

from qwen_chat.app import create_engine
from qwen_chat.engine.api.interface import Finished, GenerationRequest, TextDelta
from qwen_chat.engine.tiny import make_tiny_model
from qwen_chat.sampling_params import SamplingParams
from qwen_chat.settings import Settings
from tests.support.engine_events import collect

HYBRID = ("qwen3_5", "qwen3_5_moe", "qwen3_next")
GREEDY = SamplingParams(max_new_tokens=16, temperature=0.0, top_p=1.0, repetition_penalty=1.0)
SEEDED = SamplingParams(max_new_tokens=16, temperature=0.7, top_p=0.8, repetition_penalty=1.05, seed=7)
CHATS = [
    "hi",
    "hello there",
    "你好 <|im_end|> 😀",
    "tell me a long story about the sea and the ships that sail on it at night",
    "2 + 2?",
    "what is the capital of France, and why is it there rather than somewhere else in the country",
    "ok",
    "list three colours",
]

TURNS = ["and then?", "why", "say it again, but shorter this time please", "thanks"]

COUNTERS = ("queries", "hits")  # the prefix cache's, in prompt tokens


@pytest.fixture(scope="module")
def tiny_hybrid_dirs(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Path]:
    return {family: make_tiny_model(tmp_path_factory.mktemp(family), family=family) for family in HYBRID}


def _batch_sizes() -> tuple[float, float]:
    total = REGISTRY.get_sample_value("qwen_chat_engine_batch_size_sum", {"model": "m"}) or 0.0
    steps = REGISTRY.get_sample_value("qwen_chat_engine_batch_size_count", {"model": "m"}) or 0.0
    return total, steps


async def _first_tokens_then_leave(engine: Any, request: GenerationRequest, tokens: int) -> int:
    """Read `tokens` tokens of the reply, then leave (which cancels it)."""
    seen = 0
    async for event in engine.generate(request):
        if isinstance(event, TextDelta):
            seen = event.completion_tokens
            if seen >= tokens:
                break
        elif isinstance(event, Finished):
            break
    return seen


@pytest.mark.anyio
@pytest.mark.parametrize("family", HYBRID)
async def test_hybrid_replies_equal_generate_alone_batched_after_cancels_and_resumed(
    family: str, make_settings: Callable[..., Settings], tiny_hybrid_dirs: dict[str, Path]
) -> None:
    model = str(tiny_hybrid_dirs[family])
    alone: list[Any] = []
    engine = create_engine(make_settings(model=model, engine="simple", served_model_name="m"))
    await engine.start()
    try:
        prompts = [engine.prompts.encode_chat([{"role": "user", "content": chat}]) for chat in CHATS]
        for n, ids in enumerate(prompts):
            alone.append(await collect(engine, GenerationRequest(f"a{n}", ids, GREEDY)))
        seeded_alone = await collect(engine, GenerationRequest("s", prompts[3], SEEDED))
        conversation: list[dict[str, str]] = [{"role": "user", "content": CHATS[5]}]
        turns_alone = []
        for n, content in enumerate(TURNS):
            reply, _ = await collect(
                engine, GenerationRequest(f"t{n}", engine.prompts.encode_chat(conversation), GREEDY)
            )
            turns_alone.append(reply)
            conversation += [{"role": "assistant", "content": reply}, {"role": "user", "content": content}]
    finally:
        await engine.close()
    expected = [(text, finished.completion_tokens) for text, finished in alone]
    assert all(tokens > 0 for _, tokens in expected)

    # Prompts prefilled 8 tokens at a time, between the decode steps of the rows already running.
    engine = create_engine(make_settings(model=model, served_model_name="m", max_batch_tokens=8))
    await engine.start()
    try:
        assert engine.prompts.family == family

        async def later(n: int, ids: list[int], params: SamplingParams = GREEDY) -> tuple[str, Finished]:
            await asyncio.sleep(0.02 * n)
            return await collect(engine, GenerationRequest(f"b{n}-{len(ids)}-{params.seed}", ids, params))

        before = _batch_sizes()
        together = await asyncio.gather(*(later(n, ids) for n, ids in enumerate(prompts)))
        after = _batch_sizes()
        assert [(text, f.completion_tokens) for text, f in together] == expected
        assert all(f.cached_tokens == 0 for _, f in together)
        rows, steps = after[0] - before[0], after[1] - before[1]
        assert steps and rows / steps > 2, "the replies were decoded in shared steps"

        # Three requests leave after their first tokens; the five left still get their own replies.
        cancelled = [0, 3, 5]
        outcomes = await asyncio.gather(
            *(
                _first_tokens_then_leave(engine, GenerationRequest(f"c{n}", ids, GREEDY), 2)
                if n in cancelled
                else later(n, ids)
                for n, ids in enumerate(prompts)
            )
        )
        for n, outcome in enumerate(outcomes):
            if n not in cancelled:
                assert isinstance(outcome, tuple)
                assert (outcome[0], outcome[1].completion_tokens) == expected[n]

        # A seed gives the reply `generate` gives it, alone and among seven other requests.
        seeded = (seeded_alone[0], seeded_alone[1].completion_tokens)
        text, finished = await collect(engine, GenerationRequest("s1", prompts[3], SEEDED))
        assert (text, finished.completion_tokens) == seeded
        mixed = await asyncio.gather(
            *(later(n, ids, SEEDED if n == 3 else GREEDY) for n, ids in enumerate(prompts))
        )
        assert (mixed[3][0], mixed[3][1].completion_tokens) == seeded
        assert mixed[3][1].cached_tokens > 0, "resumed from the state the earlier rounds kept"

        # A conversation: each turn resumes from the state the last one kept, and replies as `generate` does.
        conversation = [{"role": "user", "content": CHATS[5]}]
        history = 0
        model = {"model": engine._settings.model_name}
        for n, content in enumerate(TURNS):
            ids = engine.prompts.encode_chat(conversation)
            counted = [
                REGISTRY.get_sample_value(f"qwen_chat_prefix_cache_{c}_total", model) or 0 for c in COUNTERS
            ]
            reply, finished = await collect(engine, GenerationRequest(f"u{n}", ids, GREEDY))
            assert reply == turns_alone[n]
            now = [
                REGISTRY.get_sample_value(f"qwen_chat_prefix_cache_{c}_total", model) or 0 for c in COUNTERS
            ]
            assert [b - a for a, b in zip(counted, now, strict=True)] == [len(ids), finished.cached_tokens]
            if n:
                assert finished.cached_tokens >= history, "the history was not prefilled again"
            history = max(
                i for i, token in enumerate(ids) if token == ids[0]
            )  # before `<|im_start|>assistant`
            conversation += [{"role": "assistant", "content": reply}, {"role": "user", "content": content}]
    finally:
        await engine.close()


@pytest.mark.anyio
async def test_a_failed_forward_fails_its_requests_and_the_engine_goes_on(
    make_settings: Callable[..., Settings], tiny_hybrid_dirs: dict[str, Path], monkeypatch: pytest.MonkeyPatch
) -> None:
    """A forward that raises (a device error, a bug) ends the requests it held with an error (the client is
    told the model failed; the cause is logged); the loop goes on, and the next request gets its reply."""
    from qwen_chat.engine.api.interface import EngineError
    from qwen_chat.engine.core.hybrid_cache import HybridCache

    engine = create_engine(make_settings(model=str(tiny_hybrid_dirs["qwen3_5"]), served_model_name="m"))
    await engine.start()
    try:
        ids = engine.prompts.encode_chat([{"role": "user", "content": CHATS[3]}])
        forward = HybridCache.forward
        calls = 0

        def failing_once(self: HybridCache, *args: Any) -> Any:
            nonlocal calls
            calls += 1
            if calls == 3:  # the prompt's prefill, the first decode step, then this one
                raise RuntimeError("simulated device error")
            return forward(self, *args)

        monkeypatch.setattr(HybridCache, "forward", failing_once)
        with pytest.raises(EngineError):
            await collect(engine, GenerationRequest("f", ids, GREEDY))
        _, finished = await collect(engine, GenerationRequest("g", ids, GREEDY))
        assert finished.completion_tokens > 0 and finished.reason in ("stop", "length")
    finally:
        await engine.close()


def test_kept_states_are_bounded_least_recently_used_first_and_replaced_by_their_conversations_next() -> None:
    """A state is kept within the room it is given, the least recently used dropped first; a conversation's
    newer state replaces its older one; `free` drops states at once for an admitted request."""
    import torch

    from qwen_chat.engine.core.hybrid_cache import HybridLayout, RequestKV
    from qwen_chat.engine.core.kept_states import KeptStates

    layout = HybridLayout((0,), (1,), 8, 4, 1, 4, 4, 1, 4, torch.float32)  # a state is 6 tokens' worth
    kept = KeptStates(layout, marker=1)
    assert kept.cost(20) == 26

    def keep(tokens: list[int], room: int = 100) -> None:
        kv = RequestKV(layout, len(tokens), torch.device("cpu"))
        kv.length = len(tokens)
        kept.keep(tokens, {0: (torch.zeros(8, 4), torch.zeros(1, 4, 4))}, kv, room)

    a, b, c = [5] * 20, [6] * 20, [7] * 20
    keep(a), keep(b), keep(c)  # 78 of 100
    assert len(kept) == 3 and kept.tokens == 78
    assert kept.find([*a, 9]) is not None  # a is now the most recently used
    keep([8] * 20)  # no room for a fourth: b, the least recently used, goes
    assert kept.find([*b, 9]) is None and kept.find([*a, 9]) is not None and kept.find([*c, 9]) is not None
    keep([*a, 3, 3])  # a's conversation, one turn on: its older state goes
    assert len(kept) == 3 and kept.find([*a, 9]) is None and kept.find([*a, 3, 3, 9]) is not None
    assert kept.find(a) is None, "a state as long as the prompt leaves nothing to prefill: not resumed"
    assert kept.free(45) and kept.tokens <= 100 - 45
    assert not kept.free(1000) and len(kept) == 0
    assert kept.keep_point([1, *[5] * 20, 1, 5, 5], 0) == 21  # before the last generation prompt
    assert kept.keep_point([1, *[5] * 10, 1, 5], 0) == 0  # too short to be worth keeping


@pytest.mark.anyio
async def test_requests_that_do_not_fit_the_cache_wait_and_get_their_replies(
    make_settings: Callable[..., Settings], tiny_hybrid_dirs: dict[str, Path]
) -> None:
    """A cache of 200 tokens holds two of these requests at a time (prompt and reply reserved, the kept states
    besides): eight sent at once wait their turn, none fails, and each gets the reply it gets alone."""
    settings = make_settings(
        model=str(tiny_hybrid_dirs["qwen3_5"]), max_new_tokens=64, max_input_tokens=128, kv_cache_tokens=200
    )
    engine = create_engine(settings)
    await engine.start()
    try:
        prompts = [engine.prompts.encode_chat([{"role": "user", "content": chat}]) for chat in CHATS]
        alone = [
            await collect(engine, GenerationRequest(f"a{n}", ids, GREEDY)) for n, ids in enumerate(prompts)
        ]
        together = await asyncio.gather(
            *(collect(engine, GenerationRequest(f"b{n}", ids, GREEDY)) for n, ids in enumerate(prompts))
        )
        assert [(t, f.completion_tokens) for t, f in together] == [(t, f.completion_tokens) for t, f in alone]
    finally:
        await engine.close()
