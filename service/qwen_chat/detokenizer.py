"""Turn a growing list of token ids into text deltas that concatenate to the decoded reply."""

from __future__ import annotations

from typing import Any

_REPLACEMENT = "\ufffd"


class IncrementalDetokenizer:
    """Decode the tokens so far and hand out only the new text.

    A byte-level BPE token can end in the middle of a UTF-8 character; text ending in U+FFFD is held
    back until the next token completes it (or until `flush`, which gives out whatever is left).
    """

    def __init__(self, tokenizer: Any) -> None:
        self._tokenizer = tokenizer
        self._ids: list[int] = []
        self._emitted = ""

    def push(self, ids: list[int]) -> str:
        self._ids.extend(ids)
        text = self._decode()
        if text.endswith(_REPLACEMENT) or not text.startswith(self._emitted):
            return ""
        return self._take(text)

    def flush(self) -> str:
        text = self._decode()
        return self._take(text) if text.startswith(self._emitted) else ""

    @property
    def text(self) -> str:
        return self._emitted

    def _decode(self) -> str:
        return str(
            self._tokenizer.decode(self._ids, skip_special_tokens=True, clean_up_tokenization_spaces=False)
        )

    def _take(self, text: str) -> str:
        delta = text[len(self._emitted) :]
        self._emitted = text
        return delta
