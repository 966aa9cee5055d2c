"""Turn chat messages into prompt tokens, within the prompt budget."""

from __future__ import annotations

from typing import Any

Message = dict[str, str]

# For tokenizers without a chat template (the seeds' Qwen-1_8B-Chat): the ChatML they were trained on.
CHATML_SYSTEM = "You are a helpful assistant."


class PromptTooLong(ValueError):
    """The newest message alone does not fit into the prompt budget."""

    def __init__(self, tokens: int, budget: int) -> None:
        super().__init__(f"the message needs {tokens} tokens, more than the {budget} this model accepts")
        self.tokens = tokens
        self.budget = budget


def render_chatml(messages: list[Message]) -> str:
    parts = []
    if not messages or messages[0]["role"] != "system":
        parts.append(f"<|im_start|>system\n{CHATML_SYSTEM}<|im_end|>\n")
    parts.extend(f"<|im_start|>{m['role']}\n{m['content']}<|im_end|>\n" for m in messages)
    parts.append("<|im_start|>assistant\n")
    return "".join(parts)


class Prompts:
    """Renders conversations with the tokenizer's chat template (or ChatML) and keeps them within budget."""

    def __init__(self, tokenizer: Any, max_input_tokens: int) -> None:
        self.tokenizer = tokenizer
        self.max_input_tokens = max_input_tokens
        self.has_template = bool(getattr(tokenizer, "chat_template", None))

    def render(self, messages: list[Message]) -> str:
        if self.has_template:
            text = self.tokenizer.apply_chat_template(messages, tokenize=False, add_generation_prompt=True)
            return str(text)
        return render_chatml(messages)

    def encode_chat(self, messages: list[Message]) -> list[int]:
        # The rendered text already holds every special token the model expects.
        ids = self.tokenizer(self.render(messages), add_special_tokens=False)["input_ids"]
        return list(ids)

    def fit(self, messages: list[Message]) -> tuple[list[Message], list[int]]:
        """Drop the oldest turns (never a system message, never the last one) until the prompt fits.

        Returns the kept messages and their prompt tokens; raises `PromptTooLong` if the last message
        (with the system message) alone is over budget.
        """
        kept = list(messages)
        while True:
            ids = self.encode_chat(kept)
            if len(ids) <= self.max_input_tokens:
                return kept, ids
            first = 1 if kept and kept[0]["role"] == "system" else 0
            if len(kept) - first <= 1:
                raise PromptTooLong(len(ids), self.max_input_tokens)
            del kept[first]
            # A conversation restarts on a user turn: drop the assistant answer that lost its question.
            while len(kept) - first > 1 and kept[first]["role"] != "user":
                del kept[first]
