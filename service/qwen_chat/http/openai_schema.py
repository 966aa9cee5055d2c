"""The bodies `/v1/chat/completions` and `/v1/completions` accept, as OpenAI defines them.

Every field the service acts on is declared; a handful it may safely ignore are declared as ignored
(`user`, `metadata`, `store`); anything else is a 400 naming the field (`extra="forbid"`), so a client
never believes a setting took effect when it did not. The penalties OpenAI defaults to 0 are accepted at 0
only.
"""

from __future__ import annotations

import json
from typing import Annotated, Any, Literal

from pydantic import BaseModel, ConfigDict, Field, field_validator, model_validator

from qwen_chat.chat.reply_options import NamedToolChoice, ResponseFormat, Tool, ToolChoice
from qwen_chat.engine.model.prompts import Message
from qwen_chat.engine.wire import MAX_TOP_LOGPROBS
from qwen_chat.sampling_params import (
    MaxNewTokens,
    MinP,
    MinTokens,
    Penalty,
    RepetitionPenalty,
    SamplingOverrides,
    Seed,
    Temperature,
    TopK,
    TopP,
)

_FORBID = ConfigDict(extra="forbid")
Text = Annotated[str, Field(max_length=200_000)]


class _Body(BaseModel):
    """Forbids unknown fields, but a field sent as `null` is one not sent (typed clients, and messages
    replayed from OpenAI, write `"logit_bias": null`, `"audio": null`): null is every field's default."""

    model_config = _FORBID

    @model_validator(mode="before")
    @classmethod
    def _nulls_are_absent(cls, data: Any) -> Any:
        return {k: v for k, v in data.items() if v is not None} if isinstance(data, dict) else data


# Content parts of OpenAI's image, video, audio and file input (Chat Completions' and the Responses API's):
# named in the 400, since the service serves text.
_MEDIA_PARTS = (
    "image_url", "input_image", "image", "video", "video_url", "input_video",
    "input_audio", "file", "input_file",
)  # fmt: skip


def text_only(data: Any) -> Any:
    """A content part's raw data, refused with its name when it is media rather than text."""
    kind = data.get("type") if isinstance(data, dict) else None
    if kind in _MEDIA_PARTS:
        raise ValueError(
            f"a {kind!r} content part is not supported: qwen-chat serves the language model only "
            "(Qwen3.5's vision tower is not loaded), so message content is text"
        )
    return data


Body = _Body  # the same rules for the other vLLM-shaped bodies (tokenizer_api.py)


class TextPart(BaseModel):
    model_config = _FORBID
    type: Literal["text"]
    text: str

    @model_validator(mode="before")
    @classmethod
    def _text_only(cls, data: Any) -> Any:
        return text_only(data)


Content = Text | list[TextPart]


def _text(content: Content | None) -> str:
    if content is None:
        return ""
    return content if isinstance(content, str) else "".join(part.text for part in content)


def json_object_text(value: str) -> str:
    """A tool call's `arguments`, checked to be a JSON object's text (empty is `{}`)."""
    try:
        parsed = json.loads(value or "{}")
    except ValueError:
        raise ValueError("arguments must be a JSON object's text") from None
    if not isinstance(parsed, dict):
        raise ValueError("arguments must be a JSON object's text")
    return value


class FunctionCall(_Body):
    name: str
    arguments: str  # a JSON object's text

    @field_validator("arguments")
    @classmethod
    def _json_object(cls, value: str) -> str:
        return json_object_text(value)


class ToolCallIn(_Body):
    id: str
    type: Literal["function"] = "function"
    function: FunctionCall


class _Turn(_Body):
    name: str | None = None  # accepted; the templates have no place for it


class SystemMessage(_Turn):
    role: Literal["system", "developer"]
    content: Content


class UserMessage(_Turn):
    role: Literal["user"]
    content: Content


class AssistantMessage(_Turn):
    role: Literal["assistant"]
    content: Content | None = None
    tool_calls: list[ToolCallIn] | None = None
    refusal: str | None = None
    reasoning_content: str | None = None  # the chat template decides whether a prompt replays it


class ToolMessage(_Turn):
    role: Literal["tool"]
    content: Content
    tool_call_id: str


ChatMessage = Annotated[
    SystemMessage | UserMessage | AssistantMessage | ToolMessage, Field(discriminator="role")
]


def as_message(message: SystemMessage | UserMessage | AssistantMessage | ToolMessage) -> Message:
    """The turn as the chat template reads it (tool-call arguments as objects, as Qwen's templates want)."""
    role = "system" if message.role == "developer" else message.role
    turn: Message = {"role": role, "content": _text(message.content)}
    if isinstance(message, AssistantMessage) and message.reasoning_content:
        turn["reasoning_content"] = message.reasoning_content
    if isinstance(message, AssistantMessage) and message.tool_calls:
        turn["tool_calls"] = [
            {
                "id": call.id,
                "type": "function",
                "function": {
                    "name": call.function.name,
                    "arguments": json.loads(call.function.arguments or "{}"),
                },
            }
            for call in message.tool_calls
        ]
    return turn


class StreamOptions(BaseModel):
    model_config = _FORBID
    include_usage: bool = False
    continuous_usage_stats: bool = False  # vLLM's: with include_usage, usage on every chunk


class ChatTemplateArgs(BaseModel):
    """`chat_template_kwargs`, as vLLM takes it; only what the served templates read is accepted."""

    model_config = _FORBID
    enable_thinking: bool | None = None  # Qwen3: false answers without a <think> block
    preserve_thinking: bool | None = None  # Qwen3.6: earlier turns keep their reasoning in the prompt


def _stops(value: str | list[str] | None) -> list[str] | None:
    stops = [value] if isinstance(value, str) else value
    if stops is not None and len(stops) > 4:
        raise ValueError("at most 4 stop sequences")
    return stops


class _Request(_Body):
    """What both endpoints share."""

    model: str
    temperature: Temperature | None = None
    top_p: TopP | None = None
    seed: Seed | None = None
    stop: str | list[str] | None = None
    n: int | None = Field(default=None, ge=1, le=128)  # only 1 is served: a refusal (check_request)
    stream: bool = False
    stream_options: StreamOptions | None = None
    top_k: TopK | None = None  # vLLM's extension
    min_p: MinP | None = None  # vLLM's extension
    repetition_penalty: RepetitionPenalty | None = None  # vLLM's extension
    frequency_penalty: Penalty | None = None
    presence_penalty: Penalty | None = None
    ignore_eos: bool | None = None  # vLLM's extension (benchmark clients): run to max_tokens through stops
    min_tokens: MinTokens | None = None  # vLLM's extension: no stop before this many tokens
    user: str | None = None  # ignored: the key says who the user is
    metadata: dict[str, str] | None = None  # ignored
    store: bool | None = None  # ignored: nothing is stored

    @field_validator("stop")
    @classmethod
    def _stop(cls, value: str | list[str] | None) -> list[str] | None:
        return _stops(value)

    def overrides(self, max_new_tokens: int | None) -> SamplingOverrides:
        return SamplingOverrides(
            max_new_tokens=max_new_tokens,
            temperature=self.temperature,
            top_p=self.top_p,
            top_k=self.top_k,
            min_p=self.min_p,
            repetition_penalty=self.repetition_penalty,
            presence_penalty=self.presence_penalty,
            frequency_penalty=self.frequency_penalty,
            seed=self.seed,
            ignore_eos=self.ignore_eos,
            min_tokens=self.min_tokens,
        )

    @property
    def include_usage(self) -> bool:
        return bool(self.stream_options and self.stream_options.include_usage)

    @property
    def continuous_usage(self) -> bool:
        return bool(self.stream_options and self.stream_options.continuous_usage_stats)


class ChatCompletionRequest(_Request):
    messages: list[ChatMessage] = Field(min_length=1)
    max_tokens: MaxNewTokens | None = None
    max_completion_tokens: MaxNewTokens | None = None
    chat_template_kwargs: ChatTemplateArgs | None = None
    tools: list[Tool] | None = Field(default=None, max_length=128)
    tool_choice: ToolChoice | None = None
    parallel_tool_calls: bool | None = None
    response_format: ResponseFormat | None = None
    logprobs: bool | None = None
    top_logprobs: int | None = Field(default=None, ge=0, le=MAX_TOP_LOGPROBS)

    @model_validator(mode="after")
    def _consistent(self) -> ChatCompletionRequest:
        if self.top_logprobs is not None and not self.logprobs:
            raise ValueError("top_logprobs needs logprobs: true")
        if self.tool_choice not in (None, "none") and not self.tools:
            raise ValueError("tool_choice needs tools")
        named = self.tool_choice
        names = {tool.function.name for tool in self.tools or []}
        if isinstance(named, NamedToolChoice) and self.tools and named.function.name not in names:
            raise ValueError(f"tool_choice names {named.function.name!r}, which is not in tools")
        return self

    def template_args(self) -> dict[str, object] | None:
        args = self.chat_template_kwargs
        return args.model_dump(exclude_none=True) if args is not None else None


class CompletionRequest(_Request):
    prompt: str | list[int] | list[str] | list[list[int]] = Field(min_length=1)
    max_tokens: MaxNewTokens | None = 16  # OpenAI's default for completions
    logprobs: int | None = Field(default=None, ge=0, le=MAX_TOP_LOGPROBS)
    echo: Literal[False] | None = None
    best_of: int | None = Field(default=None, ge=1, le=1)
    suffix: None = None

    @field_validator("prompt")
    @classmethod
    def _one_prompt(cls, value: Any) -> Any:
        if isinstance(value, list) and value and isinstance(value[0], str | list):
            if len(value) != 1:
                raise ValueError("one prompt per request (send a string or a list of token ids)")
            value = value[0]
        if not value:
            raise ValueError("the prompt is empty")
        return value
