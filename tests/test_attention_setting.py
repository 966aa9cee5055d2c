"""QWEN_CHAT_ATTENTION: the attention the model runs. On CPU `auto` keeps SDPA; an explicit name is what the
model runs, or the start fails naming the setting; on CUDA a flash kernel that does not load leaves SDPA and
says so."""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import pytest
import structlog
import torch

from qwen_chat.engine import hf_internals
from qwen_chat.engine.model.attention import FLASH, set_attention
from qwen_chat.engine.model.loader import load_model
from qwen_chat.settings import Settings


def test_auto_keeps_sdpa_on_cpu_and_a_named_attention_is_what_the_model_runs(
    make_settings: Callable[..., Settings],
) -> None:
    assert hf_internals.attention(load_model(make_settings()).model) == "sdpa"
    assert hf_internals.attention(load_model(make_settings(attention="eager")).model) == "eager"
    with pytest.raises(RuntimeError, match="QWEN_CHAT_ATTENTION=no_such_attention"):
        load_model(make_settings(attention="no_such_attention"))


class _NoFlash:
    """A model whose flash attention cannot load (no flash_attn package, no kernel reachable)."""

    def __init__(self) -> None:
        self.asked: list[str] = []

    def set_attn_implementation(self, name: str) -> Any:
        self.asked.append(name)
        raise ImportError("flash_attn is not installed and the hub kernel is not in KERNELS_CACHE")


def test_on_cuda_a_flash_kernel_that_does_not_load_leaves_sdpa_with_a_warning() -> None:
    model = _NoFlash()
    with structlog.testing.capture_logs() as logs:
        set_attention(model, "auto", torch.device("cuda"), "qwen2")
        set_attention(model, "auto", torch.device("cuda"), "qwen3_5")  # a hybrid keeps its own attention
    assert model.asked == [FLASH]
    assert [entry["event"] for entry in logs] == ["flash_attention_unavailable"]
    assert "KERNELS_CACHE" in logs[0]["error"]
