"""A reasoning model's reply split into its thinking and its answer, wherever the deltas split the tags.

Qwen3 (and QwQ) think first: a reply opens with `<think>`, reasons, closes with `</think>`, then answers.
Templates that open the block themselves (Qwen3-2507's thinking models) leave the opening tag in the
prompt, and `enable_thinking=false` leaves an empty, closed block there, so the reply is all answer. As
vLLM's Qwen3 reasoning parser does, text inside the block is reasoning and the rest is the answer; a reply
cut off inside the block is all reasoning. The tags themselves, and the newlines that frame them, belong
to neither.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Literal

OPEN, CLOSE = "<think>", "</think>"
Part = tuple[Literal["reasoning", "answer"], str]


@dataclass(frozen=True)
class ReasoningDelta:
    """Thinking text, streamed before the answer's `TextDelta`s."""

    text: str
    completion_tokens: int


def _held_prefix(text: str, tag: str) -> int:
    """How many characters at the end of `text` may be the start of `tag`."""
    return max((n for n in range(1, len(tag)) if text.endswith(tag[:n])), default=0)


class ReasoningSplit:
    """Feeds reply text in, hands (kind, text) parts out, holding back what may be the start of a tag."""

    def __init__(self, opened: bool) -> None:
        # "start": the reply may still open a block; "reasoning": inside it; "answer": after it or without.
        self._state = "reasoning" if opened else "start"
        self._held = ""
        self._fresh = True  # at the start of the current part: leading newlines are the tag's frame

    def feed(self, text: str) -> list[Part]:
        buffered = self._held + text
        self._held = ""
        parts: list[Part] = []
        while buffered:
            if self._state == "start":
                stripped = buffered.lstrip()
                if stripped.startswith(OPEN):
                    self._enter("reasoning")
                    buffered = stripped[len(OPEN) :]
                elif OPEN.startswith(stripped):
                    self._held = buffered  # may still become `<think>`
                    break
                else:
                    self._enter("answer")
            elif self._state == "reasoning":
                end = buffered.find(CLOSE)
                if end >= 0:
                    self._emit(parts, "reasoning", buffered[:end].rstrip("\n"))
                    self._enter("answer")
                    buffered = buffered[end + len(CLOSE) :]
                    continue
                # Held back: what may open `</think>`, and the newlines before it (they frame the tag).
                tag = _held_prefix(buffered, CLOSE)
                before = buffered[: len(buffered) - tag]
                keep = tag + len(before) - len(before.rstrip("\n"))
                self._emit(parts, "reasoning", buffered[: len(buffered) - keep])
                self._held = buffered[len(buffered) - keep :]
                break
            else:
                self._emit(parts, "answer", buffered)
                break
        return parts

    def flush(self) -> list[Part]:
        """The end of the reply: what was held back is text after all."""
        held, self._held = self._held, ""
        if self._state == "start":
            self._state = "answer"
        kind: Literal["reasoning", "answer"] = "reasoning" if self._state == "reasoning" else "answer"
        parts: list[Part] = []
        self._emit(parts, kind, held.rstrip("\n") if kind == "reasoning" else held)
        return parts

    def _enter(self, state: str) -> None:
        self._state = state
        self._fresh = True

    def _emit(self, parts: list[Part], kind: Literal["reasoning", "answer"], text: str) -> None:
        if self._fresh:
            text = text.lstrip("\n")
        if text:
            self._fresh = False
            parts.append((kind, text))
