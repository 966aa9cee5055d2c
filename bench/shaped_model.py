"""Random-weight models shaped like real Qwen2.5 checkpoints, built offline from a config alone.

The work per token is the real model's: the same layers, widths, attention heads and a 151,936-row output
layer. The tokenizer is the tiny model's locally trained one, padded with added tokens (`<w123>`) to the
full vocabulary, so every id the model can pick prints. The output layer is scaled so its logits spread
like a trained model's (standard deviation `LOGIT_SPREAD`): at the server's default sampling (temperature
0.7, top_p 0.8) the nucleus is about 150 tokens, where a random model's near-flat logits would make it most
of the vocabulary. Replies are gibberish; only speed and memory mean anything.

    .venv/bin/python -m bench.shaped_model qwen2.5-0.5b DIR
"""

from __future__ import annotations

import argparse
from pathlib import Path

import torch
from transformers import Qwen2Config, Qwen2ForCausalLM
from transformers.utils import logging as transformers_logging

from qwen_chat.engine.tiny.parts import build_tokenizer

# From the published config.json of Qwen/Qwen2.5-0.5B-Instruct and Qwen/Qwen2.5-1.5B-Instruct.
SHAPES: dict[str, dict[str, int]] = {
    "qwen2.5-0.5b": {
        "hidden_size": 896,
        "intermediate_size": 4864,
        "num_hidden_layers": 24,
        "num_attention_heads": 14,
        "num_key_value_heads": 2,
    },
    "qwen2.5-1.5b": {
        "hidden_size": 1536,
        "intermediate_size": 8960,
        "num_hidden_layers": 28,
        "num_attention_heads": 12,
        "num_key_value_heads": 2,
    },
}
VOCAB_SIZE = 151936
# Standard deviation of the output logits (the final norm's output has unit scale per dimension).
LOGIT_SPREAD = 3.0


def make_shaped_model(directory: Path | str, shape: str, seed: int = 0) -> Path:
    """Build the `shape` model (bf16 weights) and the tiny tokenizer into `directory`."""
    transformers_logging.disable_progress_bar()
    directory = Path(directory)
    directory.mkdir(parents=True, exist_ok=True)
    tokenizer = build_tokenizer(seed=seed)
    tokenizer.add_tokens([f"<w{i}>" for i in range(VOCAB_SIZE - len(tokenizer))])
    torch.manual_seed(seed)
    config = Qwen2Config(
        vocab_size=VOCAB_SIZE,
        max_position_embeddings=32768,
        rope_theta=1_000_000.0,
        rms_norm_eps=1e-6,
        # Untied (the real 0.5B ties them), so the output layer can be scaled alone.
        tie_word_embeddings=False,
        bos_token_id=None,
        eos_token_id=2,
        pad_token_id=0,
        dtype="bfloat16",
        **SHAPES[shape],
    )
    model = Qwen2ForCausalLM(config).to(torch.bfloat16)
    with torch.no_grad():
        model.lm_head.weight.normal_(0.0, LOGIT_SPREAD / config.hidden_size**0.5)
    model.generation_config.eos_token_id = [2, 0]
    model.generation_config.pad_token_id = 0
    model.save_pretrained(directory)
    tokenizer.save_pretrained(directory)
    return directory


def main() -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("shape", choices=sorted(SHAPES))
    parser.add_argument("directory", type=Path)
    args = parser.parse_args()
    print(make_shaped_model(args.directory, args.shape))


if __name__ == "__main__":
    main()
