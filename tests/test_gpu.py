"""On a CUDA machine: `auto` picks the GPU in bf16, streams, and gives the memory back at shutdown."""

from __future__ import annotations

from collections.abc import Callable

import pytest
import torch

from qwen_chat.engine.interface import Finished, GenerationRequest, TextDelta
from qwen_chat.engine.simple import SimpleEngine
from qwen_chat.sampling_params import SamplingParams
from qwen_chat.settings import Settings

pytestmark = [pytest.mark.gpu, pytest.mark.anyio]


async def test_auto_device_is_cuda_bf16_and_memory_is_freed(make_settings: Callable[..., Settings]) -> None:
    baseline = torch.cuda.memory_allocated()
    engine = SimpleEngine(make_settings(device="auto", dtype="auto"))
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
