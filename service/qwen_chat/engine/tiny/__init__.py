"""The offline tiny models: random weights in each family's real layout, tokenizers trained here, saved with
`save_pretrained`, so tests, demos (`serve --dev`) and CI run the real transformers code path with no
download. Their replies are gibberish, but they stream, stop and sample like a real model's.

- `parts.py`: the tokenizer (a byte-level BPE with ChatML tokens and a chat template) and a random Qwen2
- `qwen2.py`, `qwen3.py`: Qwen2.5's and Qwen3's layouts; `qwen_v1.py`: Qwen v1's own (`qwen.tiktoken`);
  `moe.py`: Qwen3-MoE's and Qwen2-MoE's; `hybrid.py`: Qwen3.5's and Qwen3.5-MoE's (their released
  image-text layouts) and Qwen3-Next's

Importing this package loads no torch; building a model does.
"""

from __future__ import annotations

from pathlib import Path

HYBRID = ("qwen3_5", "qwen3_5_moe", "qwen3_next")  # served by the hybrid core
FAMILIES = ("qwen2", "qwen3", "qwen", "qwen3_moe", "qwen2_moe", *HYBRID)


def make_tiny_model(directory: Path | str, seed: int = 0, family: str = "qwen2") -> Path:
    """Build a tiny model of `family` (`qwen2`, `qwen3`, `qwen` for Qwen v1's own layout, the MoE
    `qwen3_moe` and `qwen2_moe`, or the hybrid `qwen3_5`, `qwen3_5_moe` and `qwen3_next`) and its tokenizer,
    and save both into `directory` (created if needed)."""
    from transformers.utils import logging as transformers_logging

    transformers_logging.disable_progress_bar()
    directory = Path(directory)
    directory.mkdir(parents=True, exist_ok=True)
    if family == "qwen3":
        from qwen_chat.engine.tiny.qwen3 import make_tiny_qwen3

        return make_tiny_qwen3(directory, seed)
    if family == "qwen":
        from qwen_chat.engine.tiny.qwen_v1 import make_tiny_qwen_v1

        return make_tiny_qwen_v1(directory, seed)
    if family in HYBRID:
        from qwen_chat.engine.tiny import hybrid

        builders = {
            "qwen3_5": hybrid.make_tiny_qwen3_5,
            "qwen3_5_moe": hybrid.make_tiny_qwen3_5_moe,
            "qwen3_next": hybrid.make_tiny_qwen3_next,
        }
        return builders[family](directory, seed)
    if family in ("qwen3_moe", "qwen2_moe"):
        from qwen_chat.engine.tiny import moe

        return (
            moe.make_tiny_qwen3_moe(directory, seed)
            if family == "qwen3_moe"
            else moe.make_tiny_qwen2_moe(directory, seed)
        )
    from qwen_chat.engine.tiny.qwen2 import make_tiny_qwen2

    return make_tiny_qwen2(directory, seed)
