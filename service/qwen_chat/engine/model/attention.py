"""Which attention the loaded model runs (`QWEN_CHAT_ATTENTION`, transformers' `attn_implementation`).

`auto`, on CUDA, asks transformers for `flash_attention_2`: the `flash_attn` package where installed, else
transformers' fallback, the `kernels-community/flash-attn2` hub kernel, which the CUDA image fetches at
build time into `KERNELS_CACHE` (docker/Dockerfile). Where neither loads, the model keeps SDPA and the start
logs why (`flash_attention_unavailable`; the batch core then warns that the GPU runs without the decode
kernel). The hybrid families keep their own attention (their core registers it), and CPU keeps SDPA. Any
other value is the user's choice: it loads, or the start fails naming the setting."""

from __future__ import annotations

from typing import Any

import structlog
import torch

from qwen_chat.engine.model.families import HYBRID

log = structlog.get_logger(__name__)

FLASH = "flash_attention_2"


def set_attention(model: Any, wanted: str, device: torch.device, family: str) -> None:
    if wanted == "auto":
        if device.type != "cuda" or family in HYBRID:
            return
        try:
            model.set_attn_implementation(FLASH)
        except Exception as exc:  # any failure to load a kernel leaves SDPA, said loudly
            log.warning("flash_attention_unavailable", attention="sdpa", error=str(exc)[:500])
        return
    try:
        model.set_attn_implementation(wanted)
    except Exception as exc:
        raise RuntimeError(f"QWEN_CHAT_ATTENTION={wanted}: {exc}") from exc
