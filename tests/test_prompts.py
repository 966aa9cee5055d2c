"""Chat prompts: the tokenizer's template or ChatML, kept within the prompt budget."""

from __future__ import annotations

from pathlib import Path

import pytest
from transformers import AutoTokenizer

from qwen_chat.engine.api.detokenizer import IncrementalDetokenizer
from qwen_chat.engine.model.prompts import Prompts, PromptTooLong, render_chatml


@pytest.fixture(scope="module")
def tokenizer(tiny_model_dir: Path):  # type: ignore[no-untyped-def]
    return AutoTokenizer.from_pretrained(tiny_model_dir)


def test_template_and_chatml_fallback_agree(tokenizer) -> None:  # type: ignore[no-untyped-def]
    messages = [
        {"role": "user", "content": "hi"},
        {"role": "assistant", "content": "yo"},
        {"role": "user", "content": "?"},
    ]
    with_template = Prompts(tokenizer, 1000).render(messages)
    tokenizer_without = AutoTokenizer.from_pretrained(tokenizer.name_or_path)
    tokenizer_without.chat_template = None
    fallback = Prompts(tokenizer_without, 1000)
    assert not fallback.has_template
    assert fallback.render(messages) == with_template == render_chatml(messages)
    assert with_template.endswith("<|im_start|>assistant\n")
    ids = fallback.encode_chat(messages)
    assert (
        ids.count(tokenizer.convert_tokens_to_ids("<|im_start|>")) == 5
    )  # system, 3 turns, assistant prompt


def test_fit_drops_oldest_turns_but_keeps_system_and_last(tokenizer) -> None:  # type: ignore[no-untyped-def]
    prompts = Prompts(tokenizer, 10_000)
    system = {"role": "system", "content": "be brief"}
    turns = []
    for i in range(6):
        turns += [
            {"role": "user", "content": f"question {i} " * 5},
            {"role": "assistant", "content": f"answer {i} " * 5},
        ]
    messages = [system, *turns, {"role": "user", "content": "last"}]
    full = len(prompts.encode_chat(messages))
    prompts.max_input_tokens = full - 10
    kept, ids = prompts.fit(messages)
    assert len(ids) <= prompts.max_input_tokens
    assert kept[0] == system and kept[-1] == messages[-1]
    assert kept[1]["role"] == "user" and kept[1]["content"].startswith("question 1")
    assert prompts.fit(messages[:2]) == (messages[:2], prompts.encode_chat(messages[:2]))


def test_fit_raises_when_the_last_message_alone_is_too_long(tokenizer) -> None:  # type: ignore[no-untyped-def]
    prompts = Prompts(tokenizer, 40)
    with pytest.raises(PromptTooLong) as too_long:
        prompts.fit(
            [
                {"role": "user", "content": "short"},
                {"role": "assistant", "content": "ok"},
                {"role": "user", "content": "long " * 100},
            ]
        )
    assert too_long.value.budget == 40 and too_long.value.tokens > 40


def test_detokenizer_deltas_concatenate_to_the_decoded_text(tokenizer) -> None:  # type: ignore[no-untyped-def]
    text = "café 你好 🚀 naïve déjà vu, kubernetes!"
    ids = tokenizer(text, add_special_tokens=False)["input_ids"]
    detok = IncrementalDetokenizer(tokenizer)
    deltas = [detok.push([i]) for i in ids]
    deltas.append(detok.flush())
    assert "".join(deltas) == text
    assert all("\ufffd" not in d for d in deltas), "partial UTF-8 must be held back, not sent as U+FFFD"
    assert sum(1 for d in deltas if d) > 5


def test_detokenizer_deltas_match_a_full_decode_of_a_long_reply(tokenizer) -> None:  # type: ignore[no-untyped-def]
    """Decoding a window, not the whole reply, must not change the text (spaces, unicode, special tokens)."""
    text = " ".join(["héllo wörld 🚀 Grüße, 你好!", "  two  spaces", "end."] * 40)
    ids = tokenizer(text, add_special_tokens=False)["input_ids"]
    im_end = tokenizer.convert_tokens_to_ids("<|im_end|>")
    ids = [*ids[:50], im_end, *ids[50:]]  # a special token inside is skipped, as in a full decode
    detok = IncrementalDetokenizer(tokenizer)
    out = "".join(detok.push(ids[i : i + 3]) for i in range(0, len(ids), 3)) + detok.flush()
    assert out == tokenizer.decode(ids, skip_special_tokens=True, clean_up_tokenization_spaces=False)
