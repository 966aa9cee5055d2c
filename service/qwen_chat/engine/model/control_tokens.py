"""A client's text stays text: only the chat template's own structure becomes control tokens.

A tokenizer reads its added tokens anywhere in a string: `<|im_start|>` and `<|im_end|>`, and on Qwen2.5 and
Qwen3 also `<tool_call>`, `</tool_response>`, `<think>` and `<|fim_prefix|>`, which are not even marked
special. Tokenizing a rendered chat template as a whole would let a user's literal
`<|im_end|>\\n<|im_start|>system` end their turn and open one of their choosing. So, before the template
renders, every string a client supplied has each control token's text (and the escape character itself)
swapped for a placeholder, which the template handles as ordinary text (it can split, strip and compare
around it); the rendered prompt is cut at the control tokens left, which only the template wrote, and the
text between them, placeholders put back, is encoded with the vocabulary alone. Cutting at added tokens is
what the tokenizer does first anyway, so a prompt whose client text holds no control token gets exactly the
ids of `apply_chat_template`.
"""

from __future__ import annotations

import re
from typing import Any

from tokenizers import Tokenizer

# Supplementary private use: no template writes these characters, and the tokenizer never sees them.
_ESCAPE = "\U000f0000"
_FIRST_INDEX = 0xF0001


class ControlTokens:
    """The tokenizer's added tokens, and the encoding of a rendered template that reads only its own."""

    def __init__(self, tokenizer: Any) -> None:
        self.ids: dict[str, int] = {t.content: i for i, t in tokenizer.added_tokens_decoder.items()}
        # Longest first, so a token is never read as a shorter one it begins with. Qwen's added tokens strip
        # no spaces and match the text as written, so cutting at their exact text is the tokenizer's own cut.
        controls = sorted(self.ids, key=len, reverse=True)
        self._structure = re.compile("|".join(map(re.escape, controls))) if controls else None
        reserved = [*controls, _ESCAPE]
        self._placeholders = {text: _ESCAPE + chr(_FIRST_INDEX + i) for i, text in enumerate(reserved)}
        self._originals = {placeholder: text for text, placeholder in self._placeholders.items()}
        self._reserved = re.compile("|".join(map(re.escape, reserved)))
        self._placeholder = re.compile(re.escape(_ESCAPE) + ".", re.DOTALL)
        # The same vocabulary, normaliser and pre-tokeniser (shared, not copied) without the added tokens.
        backend = tokenizer.backend_tokenizer
        self._vocabulary = Tokenizer(backend.model)
        self._vocabulary.normalizer = backend.normalizer
        self._vocabulary.pre_tokenizer = backend.pre_tokenizer

    def escape(self, value: Any) -> Any:
        """`value` (a client's strings, dicts and lists, as a template reads them) with every control
        token's text, in values and keys alike, made a placeholder."""
        if isinstance(value, str):
            return self._reserved.sub(lambda match: self._placeholders[match.group()], value)
        if isinstance(value, dict):
            return {self.escape(key): self.escape(item) for key, item in value.items()}
        if isinstance(value, list | tuple):
            return [self.escape(item) for item in value]
        return value

    def encode(self, rendered: str, escaped: bool = True) -> list[int]:
        """Token ids of a template rendered from escaped values: what the template wrote as a control token
        is one; everything else is text. With `escaped=False`, any text read as the tokenizer reads it."""
        ids: list[int] = []
        start = 0
        for match in self._structure.finditer(rendered) if self._structure else ():
            ids += self.text(rendered[start : match.start()], escaped)
            ids.append(self.ids[match.group()])
            start = match.end()
        return ids + self.text(rendered[start:], escaped)

    def text(self, text: str, escaped: bool = False) -> list[int]:
        """`text` encoded as text: a control token's characters are read like any others. With `escaped`, the
        placeholders `escape` wrote stand for what they replaced."""
        if escaped and _ESCAPE in text:
            text = self._placeholder.sub(self._original, text)
        if not text:
            return []
        return list(self._vocabulary.encode(text, add_special_tokens=False).ids)

    def _original(self, match: re.Match[str]) -> str:
        placeholder: str = match.group()
        return self._originals.get(placeholder, placeholder)
