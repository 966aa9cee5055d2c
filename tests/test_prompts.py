"""Chat prompts: the tokenizer's template or ChatML, kept within the prompt budget."""

from __future__ import annotations

import random
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


def _fit_one_turn_at_a_time(prompts: Prompts, messages: list[dict[str, str]]) -> list[dict[str, str]]:
    """The rule `fit` follows, the slow way: drop the oldest turn, then any that is not a user turn."""
    kept = list(messages)
    first = 1 if kept[0]["role"] == "system" else 0
    while len(prompts.encode_chat(kept)) > prompts.max_input_tokens and len(kept) - first > 1:
        del kept[first]
        while len(kept) - first > 1 and kept[first]["role"] != "user":
            del kept[first]
    return kept


def test_fit_keeps_what_dropping_one_turn_at_a_time_keeps_in_a_few_encodings(tokenizer) -> None:  # type: ignore[no-untyped-def]
    rng = random.Random(7)
    roles = ["user", "assistant", "tool"]
    for case in range(30):
        head = [{"role": "system", "content": "sys"}] if case % 2 else []
        turns = [
            {"role": rng.choice(roles), "content": "word " * rng.randint(0, 30)}
            for _ in range(rng.randint(1, 40))
        ]
        messages = [*head, *turns]
        prompts = Prompts(tokenizer, rng.randint(40, len(Prompts(tokenizer, 1).encode_chat(messages)) + 40))
        expected = _fit_one_turn_at_a_time(prompts, messages)
        if len(prompts.encode_chat(expected)) > prompts.max_input_tokens:
            with pytest.raises(PromptTooLong):
                prompts.fit(messages)
        else:
            assert prompts.fit(messages) == (expected, prompts.encode_chat(expected)), case
    # A conversation of 4,096 turns over its budget costs about log2(4,096) encodings, not one per turn.
    prompts = Prompts(tokenizer, 200)
    calls = []
    encode = prompts.encode_chat
    prompts.encode_chat = lambda kept, args=None: calls.append(len(kept)) or encode(kept, args)  # type: ignore[method-assign]
    kept, _ = prompts.fit([{"role": "user", "content": f"turn {i}"} for i in range(4096)])
    assert kept[-1]["content"] == "turn 4095" and len(calls) <= 14


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
