"""A tiny random Qwen v1 checkpoint in the original layout, as `Qwen/Qwen-7B-Chat` ships it: a `config.json`
with `model_type: "qwen"`, safetensors under Qwen v1's tensor names (`transformer.h.N.attn.c_attn`, `mlp.w1`,
`mlp.w2`, ...), a `qwen.tiktoken` vocabulary with the special tokens after it, an embedding padded past the
tokenizer, and no template. The remote code a real checkpoint carries is left out: the service never runs it.
"""

from __future__ import annotations

import base64
import json
from pathlib import Path

import torch
from safetensors.torch import save_file

from qwen_chat.engine import hf_internals
from qwen_chat.engine.model.qwen_v1.tokenizer import SPECIAL_TOKENS, VOCAB_FILE
from qwen_chat.engine.tiny.parts import train_bpe

HIDDEN, HEADS, LAYERS, MLP = 128, 4, 2, 256  # MLP: per projection; Qwen v1 stores twice that
SEQ_LENGTH = 2048
SCALE = 0.1  # small weights: a well-conditioned network, so float32 rounding stays small


def write_tiktoken(path: Path, seed: int) -> int:
    """Ranks from a trained byte-level BPE: the 256 bytes, then one token per merge, in merge order."""
    trained = json.loads(train_bpe(1024, seed, []).to_str())["model"]
    to_byte = {char: byte for byte, char in hf_internals.bytes_to_unicode().items()}

    def as_bytes(text: str) -> bytes:
        return bytes(to_byte[char] for char in text)

    ranks = [bytes([byte]) for byte in range(256)]
    for merge in trained["merges"]:
        left, right = merge if isinstance(merge, list) else merge.split(" ")
        ranks.append(as_bytes(left) + as_bytes(right))
    path.write_text(
        "".join(f"{base64.b64encode(token).decode()} {rank}\n" for rank, token in enumerate(ranks))
    )
    return len(ranks)


def make_tiny_qwen_v1(directory: Path, seed: int = 0) -> Path:
    ranks = write_tiktoken(directory / VOCAB_FILE, seed)
    tokens = ranks + len(SPECIAL_TOKENS)
    vocab_size = -(-tokens // 128) * 128  # padded, as Qwen v1's 151936 rows for 151851 tokens
    endoftext, im_start, im_end = ranks, ranks + 1, ranks + 2
    config = {
        "architectures": ["QWenLMHeadModel"],
        "auto_map": {
            "AutoConfig": "configuration_qwen.QWenConfig",
            "AutoModelForCausalLM": "modeling_qwen.QWenLMHeadModel",
        },
        "model_type": "qwen",
        "hidden_size": HIDDEN,
        "num_attention_heads": HEADS,
        "num_hidden_layers": LAYERS,
        "kv_channels": HIDDEN // HEADS,
        "intermediate_size": 2 * MLP,
        "layer_norm_epsilon": 1e-6,
        "rotary_emb_base": 10000,
        "rotary_pct": 1.0,
        "seq_length": SEQ_LENGTH,
        "max_position_embeddings": SEQ_LENGTH,
        "no_bias": True,
        "use_dynamic_ntk": True,
        "use_logn_attn": True,
        "tie_word_embeddings": False,
        "vocab_size": vocab_size,
        "bf16": False,
        "fp16": False,
        "fp32": True,
        "tokenizer_class": "QWenTokenizer",
    }
    (directory / "config.json").write_text(json.dumps(config, indent=2))
    generation = {  # Qwen-7B-Chat's own
        "chat_format": "chatml",
        "eos_token_id": endoftext,
        "pad_token_id": endoftext,
        "max_window_size": 6144,
        "max_new_tokens": 512,
        "do_sample": True,
        "top_k": 0,
        "top_p": 0.8,
        "repetition_penalty": 1.1,
    }
    (directory / "generation_config.json").write_text(json.dumps(generation, indent=2))
    tokenizer_config = {
        "tokenizer_class": "QWenTokenizer",
        "auto_map": {"AutoTokenizer": ["tokenization_qwen.QWenTokenizer", None]},
    }
    (directory / "tokenizer_config.json").write_text(json.dumps(tokenizer_config, indent=2))
    save_file(_weights(vocab_size, (endoftext, im_start, im_end), seed), str(directory / "model.safetensors"))
    return directory


def _weights(vocab_size: int, specials: tuple[int, ...], seed: int) -> dict[str, torch.Tensor]:
    generator = torch.Generator().manual_seed(seed)

    def random(*shape: int, scale: float = SCALE) -> torch.Tensor:
        return torch.randn(*shape, generator=generator) * scale

    weights = {
        "transformer.wte.weight": random(vocab_size, HIDDEN),
        "transformer.ln_f.weight": 1 + random(HIDDEN, scale=0.1),
    }
    for layer in range(LAYERS):
        prefix = f"transformer.h.{layer}."
        weights |= {
            prefix + "ln_1.weight": 1 + random(HIDDEN, scale=0.1),
            prefix + "attn.c_attn.weight": random(3 * HIDDEN, HIDDEN),
            prefix + "attn.c_attn.bias": random(3 * HIDDEN, scale=0.2),
            prefix + "attn.c_proj.weight": random(HIDDEN, HIDDEN),
            prefix + "ln_2.weight": 1 + random(HIDDEN, scale=0.1),
            prefix + "mlp.w1.weight": random(MLP, HIDDEN),
            prefix + "mlp.w2.weight": random(MLP, HIDDEN),
            prefix + "mlp.c_proj.weight": random(HIDDEN, MLP),
        }
    # As in the Qwen2 tiny model, special tokens are possible but rare, and merged tokens are favoured over
    # single bytes. All weights are small (SCALE): float32 rounding then stays well below the 1e-5 that the
    # conversion is checked to (tests/test_model_families.py), where larger ones amplify it past that.
    head = random(vocab_size, HIDDEN)
    head[list(specials)] *= 0.2
    head[:256] *= 0.3
    weights["lm_head.weight"] = head
    return weights
