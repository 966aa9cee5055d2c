"""Turn chat messages into prompt tokens, within the prompt budget; and say how the model writes tool calls
(`tool_format`): Hermes JSON in `<tool_call>` (Qwen2.5, Qwen3, Qwen3-Next; vLLM's `hermes` parser) or
Qwen3.5's XML `<function=NAME><parameter=KEY>` (Qwen3.5/3.6/3.8, Qwen3-Coder; vLLM's `qwen3_coder`). The chat
template decides, as it is what teaches the model the format; the family only where it shows neither."""

from __future__ import annotations

from typing import Any

from jinja2 import TemplateError

from qwen_chat.engine.grammar_spec import ToolFormat
from qwen_chat.engine.model.control_tokens import ControlTokens

Message = dict[str, Any]  # role, content; an assistant turn may hold tool_calls
# Per-request chat template arguments (`chat_template_kwargs`), e.g. Qwen3's `enable_thinking`.
TemplateArgs = dict[str, object]

# For tokenizers without a chat template (the seeds' Qwen-1_8B-Chat): the ChatML they were trained on.
CHATML_SYSTEM = "You are a helpful assistant."


# Families whose released chat templates ask for XML tool calls.
XML_TOOL_FAMILIES = frozenset({"qwen3_5", "qwen3_5_moe", "qwen3_5_text", "qwen3_5_moe_text"})


def tool_format(chat_template: object, family: str = "") -> ToolFormat:
    """How a model with this chat template (a string, a dict of named templates, or None) writes tool
    calls: `xml` where its tool instructions show `<function=`, `hermes` where they show `<tool_call>` alone,
    else by the family."""
    template = str(chat_template or "")
    if "<function=" in template:
        return "xml"
    if "<tool_call>" in template:
        return "hermes"
    return "xml" if family in XML_TOOL_FAMILIES else "hermes"


class TemplateRefused(ValueError):
    """The model's chat template refused the conversation (Qwen3.5's: a system turn that is not first, no
    user turn): the client's to change, with the template's own words."""


class PromptTooLong(ValueError):
    """The newest message alone does not fit into the prompt budget."""

    def __init__(self, tokens: int, budget: int) -> None:
        super().__init__(f"the message needs {tokens} tokens, more than the {budget} this model accepts")
        self.tokens = tokens
        self.budget = budget


def chatml_parts(messages: list[Message]) -> list[tuple[bool, str]]:
    """ChatML, with the default system turn when there is none, as (is a control token, text) pieces:
    Qwen v1's `make_context` encodes each piece on its own."""
    if not messages or messages[0]["role"] != "system":
        messages = [{"role": "system", "content": CHATML_SYSTEM}, *messages]
    parts: list[tuple[bool, str]] = []
    for m in messages:
        parts += [(True, "<|im_start|>"), (False, m["role"]), (False, "\n"), (False, m["content"])]
        parts += [(True, "<|im_end|>"), (False, "\n")]
    return [*parts, (True, "<|im_start|>"), (False, "assistant"), (False, "\n")]


def render_chatml(messages: list[Message]) -> str:
    return "".join(text for _, text in chatml_parts(messages))


def thinking_apart(messages: list[Message]) -> list[Message]:
    """Assistant turns replayed with their thinking in `content` (`<think>...</think>answer`), split into
    `reasoning_content` and the answer exactly as Qwen3's templates split them: the template can no longer
    see the client's `</think>` once it is text (`control_tokens.py`), and decides itself what to replay."""
    split = []
    for message in messages:
        content = message.get("content")
        if message["role"] == "assistant" and isinstance(content, str) and "</think>" in content:
            parts = content.split("</think>")
            thinking = parts[0].rstrip("\n").split("<think>")[-1].lstrip("\n")
            message = {"reasoning_content": thinking, **message, "content": parts[-1].lstrip("\n")}
        split.append(message)
    return split


class Prompts:
    """Renders conversations with the tokenizer's chat template (or ChatML) and keeps them within budget.

    Whatever a client wrote is encoded as text (`control_tokens.py`): only the template's own structure
    becomes control tokens, so a user's literal `<|im_end|>` can never end a turn. Qwen v1 (`family="qwen"`)
    is encoded as its own `make_context` does: ChatML built part by part, message text as text.
    """

    def __init__(
        self, tokenizer: Any, max_input_tokens: int, family: str = "qwen2", context_length: int = 0
    ) -> None:
        self.tokenizer = tokenizer
        self.max_input_tokens = max_input_tokens
        self.context_length = context_length or max_input_tokens  # a prompt and its reply together
        self.family = family
        self.has_template = bool(getattr(tokenizer, "chat_template", None)) and family != "qwen"
        # Qwen2.5 and Qwen3 templates list the tools in the system turn and render calls and results.
        self.takes_tools = self.has_template and "tools" in str(tokenizer.chat_template)
        vocab = tokenizer.get_vocab()
        # Replies open with a `<think>` block where the vocabulary has one (Qwen3, QwQ): chat/reasoning.py.
        self.reasons = "<think>" in vocab and "</think>" in vocab
        self.controls = ControlTokens(tokenizer)
        self._splits_thinking = self.has_template and "</think>" in str(tokenizer.chat_template)

    def render(self, messages: list[Message], template_args: TemplateArgs | None = None) -> str:
        if self.has_template:
            try:
                text = self.tokenizer.apply_chat_template(
                    messages, tokenize=False, add_generation_prompt=True, **(template_args or {})
                )
            except TemplateError as exc:
                raise TemplateRefused(f"the model's chat template refused the conversation: {exc}") from None
            return str(text)
        return render_chatml(messages)

    def encode_chat(self, messages: list[Message], template_args: TemplateArgs | None = None) -> list[int]:
        if self.family == "qwen":
            return self._encode_chatml_parts(messages)
        if self._splits_thinking:
            messages = thinking_apart(messages)
        escape = self.controls.escape
        return self.controls.encode(self.render(escape(messages), escape(template_args)))

    def encode_prompt(self, text: str, control_tokens: bool) -> list[int]:
        """A raw prompt (`/v1/completions`): all text, or with control tokens' text read as those tokens."""
        return self.controls.encode(text, escaped=False) if control_tokens else self.controls.text(text)

    def opens_reasoning(self, prompt_ids: list[int]) -> bool:
        """Whether the prompt itself ends inside a `<think>` block (templates that open it for the model)."""
        if not self.reasons:
            return False
        tail = self.tokenizer.decode(prompt_ids[-8:], skip_special_tokens=False)
        return str(tail).rstrip().endswith("<think>")

    def _encode_chatml_parts(self, messages: list[Message]) -> list[int]:
        ids: list[int] = []
        for control, text in chatml_parts(messages):
            if control:
                ids.append(self.controls.ids[text])
            else:
                ids += self.controls.text(text)
        return ids

    def fit(
        self, messages: list[Message], template_args: TemplateArgs | None = None
    ) -> tuple[list[Message], list[int]]:
        """Drop the oldest turns (never a system message, never the last one) until the prompt fits: the
        conversation then restarts on a user turn (an answer that lost its question goes too), or is the last
        message alone.

        Returns the kept messages and their prompt tokens; raises `PromptTooLong` if the last message
        (with the system message) alone is over budget. The fewest turns are dropped: a binary search over
        where the kept turns start (a later start is never longer), so a long conversation costs a few
        encodings, not one per dropped turn.
        """
        ids = self.encode_chat(messages, template_args)
        if len(ids) <= self.max_input_tokens:
            return list(messages), ids
        first = 1 if messages and messages[0]["role"] == "system" else 0
        head, turns = messages[:first], messages[first:]
        if len(turns) <= 1:
            raise PromptTooLong(len(ids), self.max_input_tokens)
        starts = [i for i in range(1, len(turns) - 1) if turns[i]["role"] == "user"] + [len(turns) - 1]
        found: tuple[list[Message], list[int]] | None = None
        low, high = 0, len(starts) - 1
        while low <= high:  # the earliest start that fits
            middle = (low + high) // 2
            kept = head + turns[starts[middle] :]
            encoded = self.encode_chat(kept, template_args)
            if len(encoded) <= self.max_input_tokens:
                found, high = (kept, encoded), middle - 1
            else:
                ids, low = encoded, middle + 1
        if found is None:
            raise PromptTooLong(len(ids), self.max_input_tokens)
        return found
