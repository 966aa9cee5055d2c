"""Random-weight models shaped like real Qwen2.5 and Qwen3.5 checkpoints, built offline from a config alone.

The work per token is the real model's: the same layers, widths, attention heads and a 151,936-row output
layer. The tokenizer is the tiny model's locally trained one, its vocabulary padded (`<w123>`) to the full
size. Only the trained tokens are ever picked: the padding rows of the output layer are zero (logit 0, far
below the trained tokens' top logits), so a reply's text tokenizes again to about as many tokens as were
generated and a conversation's history grows as a real one does (a padding token's text would come back as
five). The trained rows are scaled so their logits spread like a trained model's (standard deviation
`LOGIT_SPREAD`): at the server's default sampling (temperature 0.7, top_p 0.8) the nucleus is about 6
tokens, where a random model's near-flat logits would make it most of the vocabulary. Replies are gibberish;
only speed and memory mean anything.

The Qwen3.5 shape is the language model of the released checkpoint (`Qwen3_5ForCausalLM`, what the service
loads of it): three Gated DeltaNet layers to one full-attention layer, its 248,320-row vocabulary.

    .venv/bin/python -m bench.shaped_model qwen2.5-0.5b DIR
"""

from __future__ import annotations

import argparse
import json
from pathlib import Path
from typing import Any

import torch
from tokenizers import Tokenizer
from transformers import (
    PreTrainedTokenizerFast,
    Qwen2Config,
    Qwen2ForCausalLM,
    Qwen3_5ForCausalLM,
    Qwen3_5TextConfig,
)
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
# Qwen/Qwen3.5-0.8B's text_config as the hub's config.json gives it (24 layers, 6 of them full attention
# with 8 query and 2 key-value heads of 256, hidden 1024, context 262,144, vocabulary 248,320); the Gated
# DeltaNet widths (16 key and 16 value heads of 128, a 4-wide conv) and the MLP's 3,584 as transcribed from
# the same file, not re-read here (no hub).
HYBRID_SHAPES: dict[str, dict[str, object]] = {
    "qwen3.5-0.8b": {
        "hidden_size": 1024,
        "intermediate_size": 3584,
        "num_hidden_layers": 24,
        "num_attention_heads": 8,
        "num_key_value_heads": 2,
        "head_dim": 256,
        "linear_num_key_heads": 16,
        "linear_num_value_heads": 16,
        "linear_key_head_dim": 128,
        "linear_value_head_dim": 128,
        "linear_conv_kernel_dim": 4,
        "vocab_size": 248_320,
        "max_position_embeddings": 262_144,
    },
}
# Standard deviation of the output logits (the final norm's output has unit scale per dimension).
LOGIT_SPREAD = 3.0
# Every shape: untied (the real small models tie them), so the output layer can be scaled alone; the tiny
# tokenizer's end of turn and padding; bf16.
_SAVED_AS: dict[str, Any] = {
    "tie_word_embeddings": False,
    "bos_token_id": None,
    "eos_token_id": 2,
    "pad_token_id": 0,
    "dtype": "bfloat16",
}


def make_shaped_model(directory: Path | str, shape: str, seed: int = 0) -> Path:
    """Build the `shape` model (bf16 weights) and the tiny tokenizer into `directory`."""
    transformers_logging.disable_progress_bar()
    directory = Path(directory)
    directory.mkdir(parents=True, exist_ok=True)
    hybrid = HYBRID_SHAPES.get(shape)
    vocab_size = int(hybrid["vocab_size"]) if hybrid else VOCAB_SIZE  # type: ignore[call-overload]
    trained = build_tokenizer(seed=seed)
    tokenizer = _padded(trained, vocab_size)
    torch.manual_seed(seed)
    if hybrid is not None:
        text = Qwen3_5TextConfig(**_SAVED_AS, **hybrid)
        return _save(Qwen3_5ForCausalLM(text), tokenizer, len(trained), directory)
    config = Qwen2Config(
        vocab_size=VOCAB_SIZE,
        max_position_embeddings=32768,
        rope_theta=1_000_000.0,
        rms_norm_eps=1e-6,
        **_SAVED_AS,
        **SHAPES[shape],
    )
    return _save(Qwen2ForCausalLM(config), tokenizer, len(trained), directory)


def _padded(tokenizer: Any, size: int) -> Any:
    """`tokenizer` with its vocabulary padded to `size` by ordinary vocabulary entries `<w123>` (no merge
    makes them, so they only decode). Added tokens would be read as control tokens, of which a prompt
    encoder handles a few dozen, not a quarter of a million."""
    state = json.loads(tokenizer.backend_tokenizer.to_str())
    vocab: dict[str, int] = state["model"]["vocab"]
    taken = len(tokenizer)
    vocab.update({f"<w{i}>": i for i in range(taken, size)})
    padded = PreTrainedTokenizerFast(
        tokenizer_object=Tokenizer.from_str(json.dumps(state)),
        eos_token=tokenizer.eos_token,
        pad_token=tokenizer.pad_token,
        chat_template=tokenizer.chat_template,
        model_max_length=tokenizer.model_max_length,
        clean_up_tokenization_spaces=False,
    )
    assert len(padded) == size and padded.decode([size - 1]) == f"<w{size - 1}>"
    return padded


def _save(model: Any, tokenizer: Any, trained: int, directory: Path) -> Path:
    """Save `model` in bf16 with `tokenizer`, only its first `trained` tokens ever picked."""
    model = model.to(torch.bfloat16)
    with torch.no_grad():
        model.lm_head.weight.normal_(0.0, LOGIT_SPREAD / model.config.hidden_size**0.5)
        model.lm_head.weight[trained:] = 0.0  # the vocabulary's padding is never picked
    model.generation_config.eos_token_id = [2, 0]
    model.generation_config.pad_token_id = 0
    model.save_pretrained(directory)
    tokenizer.save_pretrained(directory)
    return directory


def main() -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("shape", choices=sorted([*SHAPES, *HYBRID_SHAPES]))
    parser.add_argument("directory", type=Path)
    args = parser.parse_args()
    print(make_shaped_model(args.directory, args.shape))


if __name__ == "__main__":
    main()
