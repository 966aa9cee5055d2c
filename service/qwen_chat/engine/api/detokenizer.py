"""Turn a growing list of token ids into text deltas that concatenate to the decoded reply."""

from __future__ import annotations

from typing import Any

_REPLACEMENT = "\ufffd"


class IncrementalDetokenizer:
    """Hand out only the new text, decoding a short window of recent tokens rather than the whole reply.

    The window starts a few tokens before the new ones (`_prefix_offset`), so tokenizers that treat the
    start of a decode specially (leading spaces, byte fallback) see the same context both times; the new
    text is the window's decode minus the decode of its already-emitted part. A byte-level BPE token can end
    in the middle of a UTF-8 character; text ending in U+FFFD is held back until the next token completes it
    (or until `flush`, which gives out whatever is left). Each step costs O(window), not O(reply).
    """

    def __init__(self, tokenizer: Any) -> None:
        self._tokenizer = tokenizer
        self._ids: list[int] = []
        self._prefix_offset = 0  # the window starts here
        self._read_offset = 0  # tokens before this have been handed out as text

    def push(self, ids: list[int]) -> str:
        self._ids.extend(ids)
        return self._advance(final=False)

    def flush(self) -> str:
        return self._advance(final=True)

    def _advance(self, final: bool) -> str:
        prefix = self._decode(self._ids[self._prefix_offset : self._read_offset])
        window = self._decode(self._ids[self._prefix_offset :])
        if len(window) <= len(prefix) or not window.startswith(prefix):
            return ""
        if window.endswith(_REPLACEMENT) and not final:
            return ""
        delta = window[len(prefix) :]
        self._prefix_offset, self._read_offset = self._read_offset, len(self._ids)
        return delta

    def _decode(self, ids: list[int]) -> str:
        if not ids:
            return ""
        return str(self._tokenizer.decode(ids, skip_special_tokens=True, clean_up_tokenization_spaces=False))
