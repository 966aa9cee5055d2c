"""The prefix cache's hit signal on the batch core: a conversation's next turn finds its history in the
shared KV pages, says so in its usage (`cached_tokens`), and the hit counters (and vLLM's names for them,
which a prefix-aware router's operator reads) move by exactly that much."""

from __future__ import annotations

from collections.abc import Callable

import pytest
from prometheus_client import REGISTRY

from qwen_chat.app import create_engine
from qwen_chat.engine.api.interface import GenerationRequest
from qwen_chat.metrics.model_server_protocol import aliases
from qwen_chat.sampling_params import SamplingParams
from qwen_chat.settings import Settings
from tests.support.engine_events import collect

pytestmark = pytest.mark.anyio

HISTORY = " ".join(f"line {n} of a long shared history." for n in range(40))


def _counter(name: str, model: str) -> float:
    return REGISTRY.get_sample_value(name, {"model": model}) or 0.0


async def test_a_second_turn_finds_its_history_in_the_cache_and_the_counters_say_how_much(
    make_settings: Callable[..., Settings],
) -> None:
    engine = create_engine(make_settings(engine="batch"))
    await engine.start()
    try:
        model = engine._settings.model_name
        greedy = SamplingParams(16, 0.0, 1.0, 1.0)
        messages = [{"role": "system", "content": HISTORY}, {"role": "user", "content": "first question"}]
        first_ids = engine.prompts.encode_chat(messages)
        text, first = await collect(engine, GenerationRequest("t1", first_ids, greedy))
        assert first.cached_tokens == 0 and len(first_ids) > 64
        before = [_counter(f"qwen_chat_prefix_cache_{n}_total", model) for n in ("queries", "hits")]
        messages += [{"role": "assistant", "content": text}, {"role": "user", "content": "and then?"}]
        second_ids = engine.prompts.encode_chat(messages)
        _, second = await collect(engine, GenerationRequest("t2", second_ids, greedy))
        page = engine.facts.kv_page_size
        # Whole pages of the first turn's prompt are found again (at least the shared system prompt's).
        assert second.cached_tokens >= (len(first_ids) // page - 1) * page > 0
        assert second.cached_tokens % page == 0 and second.cached_tokens < len(second_ids)
        after = [_counter(f"qwen_chat_prefix_cache_{n}_total", model) for n in ("queries", "hits")]
        assert [b - a for a, b in zip(before, after, strict=True)] == [len(second_ids), second.cached_tokens]
        vllm = {family.name: family for family in aliases(REGISTRY.collect())}
        hits = [s for s in vllm["vllm:prefix_cache_hits"].samples if s.labels["model_name"] == model]
        assert hits[0].name == "vllm:prefix_cache_hits_total" and hits[0].value == after[1]
    finally:
        await engine.close()
