"""Log-probabilities in OpenAI's two shapes: chat's `{"content": [{"token", "logprob", "bytes",
"top_logprobs"}]}` and the completions API's `{"tokens", "token_logprobs", "top_logprobs", "text_offset"}`.

A token's text is its own decode (a byte-level token that ends inside a UTF-8 character reads as U+FFFD,
as in vLLM); `bytes` are that text's UTF-8.
"""

from __future__ import annotations

from typing import Any

from qwen_chat.engine.wire import TokenLogprob

Logprobs = list[tuple[int, TokenLogprob]]


class TokenTexts:
    """Token ids to text, remembered: a reply's alternatives repeat."""

    def __init__(self, tokenizer: Any) -> None:
        self._tokenizer = tokenizer
        self._texts: dict[int, str] = {}

    def __call__(self, token_id: int) -> str:
        text = self._texts.get(token_id)
        if text is None:
            text = self._texts[token_id] = str(self._tokenizer.decode([token_id], skip_special_tokens=False))
        return text


def _entry(text: str, logprob: float) -> dict[str, Any]:
    return {"token": text, "logprob": logprob, "bytes": list(text.encode("utf-8", "replace"))}


def chat_logprobs(entries: Logprobs, texts: TokenTexts) -> dict[str, Any]:
    content = []
    for token_id, entry in entries:
        item = _entry(texts(token_id), entry.logprob)
        item["top_logprobs"] = [
            _entry(texts(other), value)
            for other, value in zip(entry.top_ids, entry.top_logprobs, strict=True)
        ]
        content.append(item)
    return {"content": content, "refusal": None}


def completion_logprobs(entries: Logprobs, texts: TokenTexts, offset: int) -> dict[str, Any]:
    """`offset`: characters of the reply before these tokens."""
    tokens, values, tops, offsets = [], [], [], []
    for token_id, entry in entries:
        text = texts(token_id)
        tokens.append(text)
        values.append(entry.logprob)
        top: dict[str, float] = {}
        for other, value in zip(entry.top_ids, entry.top_logprobs, strict=True):
            top.setdefault(texts(other), value)
        tops.append(top)
        offsets.append(offset)
        offset += len(text)
    return {"tokens": tokens, "token_logprobs": values, "top_logprobs": tops, "text_offset": offsets}
