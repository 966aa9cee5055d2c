"""The offline tiny model loads through the real transformers path and does not collapse into a loop."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

from transformers import AutoModelForCausalLM, AutoTokenizer, Qwen2ForCausalLM

from qwen_chat.engine.tiny.parts import distinct_greedy_tokens


def test_tiny_model_is_a_qwen2_chat_model(tiny_model_dir: Path) -> None:
    tokenizer = AutoTokenizer.from_pretrained(tiny_model_dir)
    model = AutoModelForCausalLM.from_pretrained(tiny_model_dir)
    assert isinstance(model, Qwen2ForCausalLM)
    assert model.config.model_type == "qwen2"
    for token in ("<|im_start|>", "<|im_end|>", "<|endoftext|>"):
        assert tokenizer.convert_tokens_to_ids(token) is not None
        assert len(tokenizer(token, add_special_tokens=False)["input_ids"]) == 1
    prompt = tokenizer.apply_chat_template(
        [{"role": "user", "content": "hello"}], tokenize=False, add_generation_prompt=True
    )
    assert (
        prompt
        == "<|im_start|>system\nYou are a helpful assistant.<|im_end|>\n<|im_start|>user\nhello<|im_end|>\n<|im_start|>assistant\n"
    )
    ids = tokenizer(prompt)["input_ids"]
    assert distinct_greedy_tokens(model, ids, steps=64) >= 32


def test_cli_builds_the_same_model(tmp_path: Path, tiny_model_dir: Path) -> None:
    out = subprocess.run(
        [sys.executable, "-m", "qwen_chat", "make-tiny-model", str(tmp_path / "m")],
        capture_output=True,
        text=True,
        timeout=120,
        check=True,
    )
    assert out.stdout.strip() == str(tmp_path / "m")
    built = sorted(p.name for p in (tmp_path / "m").iterdir())
    assert "config.json" in built and "model.safetensors" in built and "tokenizer.json" in built
    assert (tmp_path / "m" / "model.safetensors").read_bytes() == (
        tiny_model_dir / "model.safetensors"
    ).read_bytes()
