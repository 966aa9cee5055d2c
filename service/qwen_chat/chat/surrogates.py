"""Strings that are not text, found before they reach the tokenizer."""

from __future__ import annotations

from typing import Any

from qwen_chat.errors import ErrorCode, Refusal


def has_lone_surrogate(data: Any) -> bool:
    """Whether any key or string in `data` (parsed JSON, possibly deep: no recursion) cannot be UTF-8.

    JSON may escape half of a UTF-16 pair (`"\\ud800"`); such a string is not text: the tokenizer cannot
    encode it, and neither can a reply that echoes it."""
    stack = [data]
    while stack:
        item = stack.pop()
        if isinstance(item, dict):
            stack.extend(item.keys())
            stack.extend(item.values())
        elif isinstance(item, list):
            stack.extend(item)
        elif isinstance(item, str):
            try:
                item.encode("utf-8")
            except UnicodeEncodeError:
                return True
    return False


def refuse_non_text(data: Any, param: str, what: str) -> None:
    """A `bad_request` naming `param` when `data` holds a lone surrogate; `what` says where, in words."""
    if has_lone_surrogate(data):
        message = f"{what} holds a lone surrogate (\\ud800-\\udfff): it is not text"
        raise Refusal(ErrorCode.BAD_REQUEST, message, param=param)
