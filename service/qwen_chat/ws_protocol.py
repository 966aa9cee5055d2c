"""The /ws protocol: what clients may send (validated pydantic models) and what the server sends back.

Client to server (text frames):
    {"type": "chat", "content": "...", "params": {...}, "id": "..."}   one user turn of this connection's chat
    {"type": "chat", "messages": [{"role": ..., "content": ...}], ...}  a whole conversation, stateless
    {"type": "cancel"}  {"type": "reset"}
    any text frame that does not start with "{" is a chat message whose content is the whole frame.

Server to client: `start`, `token`..., then `done`; or `error`. Every message echoes the client's `id`.
"""

from __future__ import annotations

import json
import re
from collections.abc import Sequence
from typing import Annotated, Any, Literal

from pydantic import BaseModel, ConfigDict, Field, TypeAdapter, ValidationError, model_validator

from qwen_chat.prompts import has_lone_surrogate

ErrorCode = Literal["bad_request", "too_long", "busy", "rate_limited", "overloaded", "internal"]

MAX_ID_LENGTH = 128


class _Strict(BaseModel):
    model_config = ConfigDict(extra="forbid", strict=True)


class ChatParams(_Strict):
    max_new_tokens: int | None = Field(default=None, ge=1)
    temperature: float | None = Field(default=None, ge=0.0, le=2.0)
    top_p: float | None = Field(default=None, gt=0.0, le=1.0)
    repetition_penalty: float | None = Field(default=None, gt=0.0, le=2.0)
    seed: int | None = Field(default=None, ge=0, le=2**63 - 1)


class Message(_Strict):
    role: Literal["system", "user", "assistant"]
    content: str


class ChatRequest(_Strict):
    type: Literal["chat"]
    id: str | None = Field(default=None, max_length=MAX_ID_LENGTH)
    content: str | None = None
    messages: list[Message] | None = Field(default=None, min_length=1)
    params: ChatParams = Field(default_factory=ChatParams)

    @model_validator(mode="after")
    def _one_source(self) -> ChatRequest:
        if (self.content is None) == (self.messages is None):
            raise ValueError("send either 'content' or 'messages'")
        if self.content is not None and not self.content.strip():
            raise ValueError("'content' is empty")
        if self.messages is not None and self.messages[-1].role != "user":
            raise ValueError("the last of 'messages' must have role 'user'")
        return self


class Cancel(_Strict):
    type: Literal["cancel"]
    id: str | None = Field(default=None, max_length=MAX_ID_LENGTH)


class Reset(_Strict):
    type: Literal["reset"]
    id: str | None = Field(default=None, max_length=MAX_ID_LENGTH)


ClientMessage = Annotated[ChatRequest | Cancel | Reset, Field(discriminator="type")]
_client_message: TypeAdapter[ChatRequest | Cancel | Reset] = TypeAdapter(ClientMessage)


class ProtocolError(ValueError):
    """A frame the server cannot act on; `message_id` is the client's id if it could be read."""

    def __init__(self, message: str, message_id: str | None = None) -> None:
        super().__init__(message)
        self.message_id = message_id


def parse_frame(text: str) -> ChatRequest | Cancel | Reset:
    """Parse one text frame: a JSON object, or plain text that is a chat message."""
    if not text.lstrip().startswith("{"):
        if not text.strip():
            raise ProtocolError("the message is empty")
        return ChatRequest(type="chat", content=text)
    try:
        data = json.loads(text)
    except (json.JSONDecodeError, RecursionError):
        raise ProtocolError("the frame is not valid JSON") from None
    except ValueError:  # an integer of more than 4300 digits (Python's int_max_str_digits)
        raise ProtocolError("the frame holds a number too long to read") from None
    if not isinstance(data, dict):
        raise ProtocolError("the frame must be a JSON object")
    raw_id = data.get("id")
    message_id = raw_id if isinstance(raw_id, str) and len(raw_id) <= MAX_ID_LENGTH else None
    if _ESCAPED_SURROGATE.search(text) and has_lone_surrogate(data):
        echo = None if has_lone_surrogate(message_id) else message_id
        raise ProtocolError("a string holds a lone surrogate escape (\\ud800-\\udfff): it is not text", echo)
    try:
        return _client_message.validate_python(data)
    except ValidationError as exc:
        raise ProtocolError(describe_validation_error(exc), message_id) from None


# A cheap test first: only a frame that escapes a surrogate can hold a lone one.
_ESCAPED_SURROGATE = re.compile(r"\\u[dD][89a-fA-F]")


def describe_validation_error(exc: ValidationError) -> str:
    return describe_errors(exc.errors(include_url=False, include_input=False))


def describe_errors(errors: Sequence[Any], limit: int = 3) -> str:
    """Name each offending field with pydantic's message, never echoing the (possibly huge) input."""
    parts = []
    for error in errors[:limit]:
        location = field_path(error)
        message = str(error.get("msg", "invalid")).removeprefix("Value error, ")
        parts.append(f"{location}: {message}" if location else message)
    return "; ".join(parts)


def field_path(error: Any) -> str:
    """`params.temperature` for a pydantic error, leaving out FastAPI's `body` and the union's tags."""
    return ".".join(str(part) for part in error.get("loc", ()) if part not in _NOT_FIELDS)


_NOT_FIELDS = {"body", "chat", "cancel", "reset"}


def start(message_id: str | None, queue_position: int) -> dict[str, Any]:
    return {"type": "start", "id": message_id, "queue_position": queue_position}


def token(message_id: str | None, text: str) -> dict[str, Any]:
    return {"type": "token", "id": message_id, "text": text}


def done(
    message_id: str | None,
    finish_reason: str,
    prompt_tokens: int,
    completion_tokens: int,
    ttft_ms: float,
    tokens_per_second: float,
) -> dict[str, Any]:
    return {
        "type": "done",
        "id": message_id,
        "finish_reason": finish_reason,
        "usage": {"prompt_tokens": prompt_tokens, "completion_tokens": completion_tokens},
        "timing": {"ttft_ms": round(ttft_ms, 2), "tokens_per_second": round(tokens_per_second, 2)},
    }


def error(
    message_id: str | None, code: ErrorCode, message: str, retry_after: float | None = None
) -> dict[str, Any]:
    frame: dict[str, Any] = {"type": "error", "id": message_id, "code": code, "message": message}
    if retry_after is not None:
        frame["retry_after"] = retry_after
    return frame
