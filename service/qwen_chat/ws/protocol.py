"""The /ws protocol: what clients may send (validated pydantic models) and what the server sends back.

Client to server (text frames):
    {"type": "chat", "content": "...", "params": {...}, "id": "..."}   one user turn of this connection's chat
    {"type": "chat", "messages": [{"role": ..., "content": ...}], ...}  a whole conversation, stateless
    ... "tools": [...], "tool_choice": ..., "parallel_tool_calls": ...  as OpenAI's (chat/reply_options.py)
    {"type": "chat", "tool_results": [{"tool_call_id", "content"}]}    answers the reply's tool calls
    {"type": "cancel"}  {"type": "reset"}
    any text frame that does not start with "{" is a chat message whose content is the whole frame.

Server to client: `start`, `reasoning`... (a thinking model's thinking), `token`..., `tool_call`... (one
whole call each), then `done`; or `error` (`Refusal.ws_frame`, errors.py). Every message echoes the
client's `id`. `params` is `SamplingOverrides` (sampling_params.py), `response_format` and `timeout` (the
reply's deadline in seconds, within the server's QWEN_CHAT_REQUEST_TIMEOUT: past it `done` says
`finish_reason: "timeout"`).
"""

from __future__ import annotations

import json
import re
from typing import Annotated, Any, Literal

from pydantic import BaseModel, ConfigDict, Field, TypeAdapter, ValidationError, model_validator

from qwen_chat.chat.reply_options import ResponseFormat, Tool, ToolChoice
from qwen_chat.chat.surrogates import has_lone_surrogate
from qwen_chat.errors import ErrorCode, Refusal, describe_errors
from qwen_chat.sampling_params import SamplingOverrides

MAX_ID_LENGTH = 128
# The message types' tags: pydantic puts them in an error's location, where they are not field names.
_TAGS = frozenset({"chat", "cancel", "reset"})


class _Strict(BaseModel):
    model_config = ConfigDict(extra="forbid", strict=True)


class ToolCallFunction(_Strict):
    name: str
    arguments: dict[str, Any]


class MessageToolCall(_Strict):
    id: str | None = None
    function: ToolCallFunction


class Message(_Strict):
    role: Literal["system", "user", "assistant", "tool"]
    content: str
    tool_calls: list[MessageToolCall] | None = None  # an assistant turn that called tools
    tool_call_id: str | None = None  # a tool turn: the call it answers


class ToolResult(_Strict):
    tool_call_id: str
    content: str


class Params(SamplingOverrides):
    response_format: ResponseFormat | None = None
    # Seconds from the message's arrival to the reply's end (chat/deadline.py); `X-Request-Timeout` on HTTP.
    timeout: Annotated[float, Field(gt=0, allow_inf_nan=False)] | None = None


class ChatRequest(_Strict):
    type: Literal["chat"]
    id: str | None = Field(default=None, max_length=MAX_ID_LENGTH)
    content: str | None = None
    messages: list[Message] | None = Field(default=None, min_length=1)
    tool_results: list[ToolResult] | None = Field(default=None, min_length=1)
    params: Params = Field(default_factory=Params)
    # Qwen3: false answers without thinking first (the chat template's `enable_thinking`).
    enable_thinking: bool | None = None
    # Qwen3.6: earlier turns keep their thinking in the prompt (the chat template's `preserve_thinking`).
    preserve_thinking: bool | None = None
    tools: list[Tool] | None = Field(default=None, max_length=128)
    tool_choice: ToolChoice | None = None
    parallel_tool_calls: bool | None = None

    @model_validator(mode="after")
    def _one_source(self) -> ChatRequest:
        sources = [self.content, self.messages, self.tool_results]
        if sum(source is not None for source in sources) != 1:
            raise ValueError("send one of 'content', 'messages' or 'tool_results'")
        if self.content is not None and not self.content.strip():
            raise ValueError("'content' is empty")
        if self.messages is not None and self.messages[-1].role not in ("user", "tool"):
            raise ValueError("the last of 'messages' must have role 'user' or 'tool'")
        if self.tool_choice not in (None, "none") and not self.tools:
            raise ValueError("tool_choice needs tools")
        return self


class Cancel(_Strict):
    type: Literal["cancel"]
    id: str | None = Field(default=None, max_length=MAX_ID_LENGTH)


class Reset(_Strict):
    type: Literal["reset"]
    id: str | None = Field(default=None, max_length=MAX_ID_LENGTH)


ClientMessage = Annotated[ChatRequest | Cancel | Reset, Field(discriminator="type")]
_client_message: TypeAdapter[ChatRequest | Cancel | Reset] = TypeAdapter(ClientMessage)


class ProtocolError(Refusal):
    """A frame the server cannot act on (`bad_request`); `message_id` is the client's id if it can be read."""

    def __init__(self, message: str, message_id: str | None = None) -> None:
        super().__init__(ErrorCode.BAD_REQUEST, message)
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
        errors = exc.errors(include_url=False, include_input=False)
        raise ProtocolError(describe_errors(errors, _TAGS), message_id) from None


# A cheap test first: only a frame that escapes a surrogate can hold a lone one.
_ESCAPED_SURROGATE = re.compile(r"\\u[dD][89a-fA-F]")


def start(message_id: str | None, queue_position: int) -> dict[str, Any]:
    return {"type": "start", "id": message_id, "queue_position": queue_position}


def token(message_id: str | None, text: str) -> dict[str, Any]:
    return {"type": "token", "id": message_id, "text": text}


def reasoning(message_id: str | None, text: str) -> dict[str, Any]:
    return {"type": "reasoning", "id": message_id, "text": text}


def tool_call(message_id: str | None, call_id: str, name: str, arguments: str) -> dict[str, Any]:
    """One whole call; `arguments` is a JSON object's text, as in OpenAI's tool_calls."""
    return {
        "type": "tool_call",
        "id": message_id,
        "call": {"id": call_id, "name": name, "arguments": arguments},
    }


def done(
    message_id: str | None,
    finish_reason: str,
    prompt_tokens: int,
    completion_tokens: int,
    ttft_ms: float,
    tokens_per_second: float,
    cached_tokens: int = 0,
) -> dict[str, Any]:
    """`usage.prompt_tokens_details.cached_tokens`: the prompt tokens found in the engine's prefix cache (its
    shared pages, or the conversation's kept state) instead of prefilled (OpenAI's field)."""
    usage = {
        "prompt_tokens": prompt_tokens,
        "completion_tokens": completion_tokens,
        "prompt_tokens_details": {"cached_tokens": cached_tokens},
    }
    return {
        "type": "done",
        "id": message_id,
        "finish_reason": finish_reason,
        "usage": usage,
        "timing": {"ttft_ms": round(ttft_ms, 2), "tokens_per_second": round(tokens_per_second, 2)},
    }
