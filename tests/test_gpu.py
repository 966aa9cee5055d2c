"""On a CUDA machine: `auto` picks the GPU in bf16, both cores stream, the batch core fills the device and
keeps seeds, the engine process does the same, and the memory goes back at shutdown."""

from __future__ import annotations

import asyncio
import json
from collections.abc import Callable

import pytest
import torch

from qwen_chat.app import create_engine
from qwen_chat.engine.api.in_thread import ThreadEngine
from qwen_chat.engine.api.interface import Finished, GenerationRequest, TextDelta
from qwen_chat.engine.api.process import ProcessEngine
from qwen_chat.engine.core.batch import BatchCore
from qwen_chat.engine.core.kv_cache import CPU_CACHE_TOKENS, DEFAULT_MAX_RUNNING
from qwen_chat.sampling_params import SamplingParams
from qwen_chat.settings import Settings

pytestmark = [pytest.mark.gpu, pytest.mark.anyio]


async def test_auto_device_is_cuda_bf16_and_memory_is_freed(make_settings: Callable[..., Settings]) -> None:
    baseline = torch.cuda.memory_allocated()
    engine = ThreadEngine(make_settings(device="auto", dtype="auto", engine="simple"))
    await engine.start()
    loaded = engine._loaded
    assert loaded is not None
    assert loaded.device.type == "cuda" and loaded.dtype == torch.bfloat16
    assert torch.cuda.memory_allocated() > baseline
    ids = engine.prompts.encode_chat([{"role": "user", "content": "hello gpu"}])
    deltas = 0
    async for event in engine.generate(GenerationRequest("g", ids, SamplingParams(32, 0.7, 0.8, 1.05, 1))):
        deltas += isinstance(event, TextDelta)
        if isinstance(event, Finished):
            assert event.completion_tokens == 32
    assert deltas > 1
    await engine.close()
    assert torch.cuda.memory_allocated() == baseline


async def test_batch_engine_fills_the_gpu_and_keeps_seeds(make_settings: Callable[..., Settings]) -> None:
    """The default engine on CUDA: many slots, a cache sized from free memory, sampled rows reproducible
    by seed whatever else runs, every request of a full batch finishing, the memory given back."""
    baseline = torch.cuda.memory_allocated()
    # float32: a bf16 logit can differ in its last bit between batch shapes, enough to move a draw.
    engine = create_engine(make_settings(device="auto", dtype="float32", engine="batch", max_waiting=64))
    assert isinstance(engine, ThreadEngine)
    await engine.start()
    try:
        assert engine.max_running == DEFAULT_MAX_RUNNING["cuda"]
        assert isinstance(engine._core, BatchCore)
        cache = engine._core._manager.batch_processor.cache
        assert cache.num_blocks * 256 > CPU_CACHE_TOKENS, "the cache comes from device memory, not a budget"
        ids = engine.prompts.encode_chat([{"role": "user", "content": "hello gpu"}])
        seeded = SamplingParams(32, 0.7, 0.8, 1.05, seed=5)

        async def reply(request_id: str, params: SamplingParams) -> tuple[str, int]:
            text, tokens = "", 0
            async for event in engine.generate(GenerationRequest(request_id, ids, params)):
                if isinstance(event, TextDelta):
                    text += event.text
                elif isinstance(event, Finished):
                    tokens = event.completion_tokens
            return text, tokens

        alone = await reply("alone", seeded)
        others = [SamplingParams(32, 0.7, 0.8, 1.05, seed=i) for i in range(63)]
        together = await asyncio.gather(
            reply("seeded", seeded), *(reply(f"o{i}", p) for i, p in enumerate(others))
        )
        assert together[0] == alone
        assert all(tokens == 32 for _, tokens in together), "no request of a full batch fails or stops short"
    finally:
        await engine.close()
    assert torch.cuda.memory_allocated() <= baseline + 64 * 2**20


async def test_the_engine_process_runs_on_the_gpu_and_gives_its_memory_back(
    make_settings: Callable[..., Settings],
) -> None:
    free_before, _ = torch.cuda.mem_get_info()
    engine = create_engine(make_settings(device="auto", dtype="auto", engine_process=True))
    assert isinstance(engine, ProcessEngine)
    await engine.start()
    try:
        facts = engine.facts
        assert facts.device.startswith("cuda") and facts.dtype == "bfloat16"
        assert facts.kv_cache_pages * facts.kv_page_size > CPU_CACHE_TOKENS
        assert torch.cuda.mem_get_info()[0] < free_before - 2**30, "the child holds the cache"
        ids = engine.prompts.encode_chat([{"role": "user", "content": "hello gpu"}])

        async def tokens(request_id: str) -> int:
            async for event in engine.generate(
                GenerationRequest(request_id, ids, SamplingParams(32, 0.7, 0.8, 1.05))
            ):
                if isinstance(event, Finished):
                    return event.completion_tokens
            return 0

        assert await asyncio.gather(*(tokens(f"p{i}") for i in range(64))) == [32] * 64
    finally:
        await engine.close()
    assert torch.cuda.mem_get_info()[0] > free_before - 256 * 2**20, "the engine process gave its memory back"


async def _replies(engine: ThreadEngine, requests: list[GenerationRequest]) -> list[str]:
    async def one(request: GenerationRequest) -> str:
        text = ""
        async for event in engine.generate(request):
            if isinstance(event, TextDelta):
                text += event.text
        return text

    return list(await asyncio.gather(*(one(request) for request in requests)))


async def test_cuda_graphs_keep_greedy_replies_seeds_and_grammars(
    make_settings: Callable[..., Settings], record_property: Callable[[str, object], None]
) -> None:
    """The batch core with CUDA graphs forced on (SDPA; the sampler's static mode inside the graph) against
    the same core eager: greedy replies agree in float32 (their agreement rate, and bf16's, go into the
    JUnit XML), a seed draws the same reply alone and in a full batch, and a grammar-constrained request
    (its steps synchronous and eager) returns JSON beside free ones."""
    prompts = [f"tell me about the number {n}" for n in range(16)]
    rates = {}
    for dtype in ("float32", "bfloat16"):
        runs = []
        for graphs in ("on", "off"):
            engine = create_engine(
                make_settings(device="cuda", dtype=dtype, engine="batch", cuda_graphs=graphs)
            )
            assert isinstance(engine, ThreadEngine)
            await engine.start()
            try:
                assert isinstance(engine._core, BatchCore)
                assert ("cuda_graphs" in engine._core.facts().fast_paths) is (graphs == "on")
                greedy = SamplingParams(24, 0.0, 1.0, 1.0)
                encode = engine.prompts.encode_chat
                requests = [
                    GenerationRequest(f"g{n}", encode([{"role": "user", "content": p}]), greedy)
                    for n, p in enumerate(prompts)
                ]
                runs.append(await _replies(engine, requests))
                if graphs == "on" and dtype == "float32":
                    await _seed_and_grammar_under_graphs(engine)
            finally:
                await engine.close()
        rates[dtype] = sum(a == b for a, b in zip(*runs, strict=True)) / len(prompts)
        record_property(f"greedy_agreement_{dtype}", rates[dtype])
    assert rates["float32"] >= 0.9, rates


async def _seed_and_grammar_under_graphs(engine: ThreadEngine) -> None:
    ids = engine.prompts.encode_chat([{"role": "user", "content": "hello gpu"}])
    seeded = SamplingParams(32, 0.7, 0.8, 1.05, seed=5)
    (alone,) = await _replies(engine, [GenerationRequest("alone", ids, seeded)])
    others = [GenerationRequest(f"o{i}", ids, SamplingParams(32, 0.7, 0.8, 1.05, seed=i)) for i in range(31)]
    together = await _replies(engine, [GenerationRequest("seeded", ids, seeded), *others])
    assert together[0] == alone
    schema = {"type": "object", "properties": {"n": {"type": "integer", "minimum": 0, "maximum": 9}}}
    schema |= {"required": ["n"], "additionalProperties": False}
    constraint = json.dumps({"type": "json_schema", "json_schema": {"schema": schema}})
    sampled = SamplingParams(30, 0.8, 0.9, 1.1, seed=5)
    constrained = GenerationRequest("json", ids, sampled, constraint=constraint)
    replies = await _replies(engine, [constrained, *others[:8]])
    assert isinstance(json.loads(replies[0])["n"], int)
