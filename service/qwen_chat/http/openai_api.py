"""OpenAI-compatible `POST /v1/chat/completions` (plain and streaming) and `GET /v1/models`, so the
official `openai` SDK works with only `base_url` and `api_key` set."""

from __future__ import annotations

import json
import time
import uuid
from collections.abc import AsyncIterator
from typing import Annotated, Any, Literal

from fastapi import APIRouter
from fastapi.sse import EventSourceResponse, format_sse_event
from pydantic import BaseModel, ConfigDict, Field, field_validator

from qwen_chat.chat.reasoning import ReasoningDelta
from qwen_chat.chat.stream import ChatStream
from qwen_chat.engine.interface import Finished
from qwen_chat.engine.prompts import Message
from qwen_chat.errors import ErrorCode, Refusal
from qwen_chat.http.bearer import PrincipalDep
from qwen_chat.http.errors import SSE_RESPONSE
from qwen_chat.metrics import Transport
from qwen_chat.sampling_params import MaxNewTokens, SamplingOverrides, Seed, Temperature, TopP, resolve
from qwen_chat.service import ServiceDep

router = APIRouter(prefix="/v1", tags=["openai"])


class TextPart(BaseModel):
    type: Literal["text"]
    text: str


class ChatMessage(BaseModel):
    model_config = ConfigDict(extra="ignore")
    role: Literal["system", "developer", "user", "assistant"]
    content: Annotated[str | list[TextPart], Field(max_length=200_000)]

    def as_message(self) -> Message:
        text = self.content if isinstance(self.content, str) else "".join(part.text for part in self.content)
        return {"role": "system" if self.role == "developer" else self.role, "content": text}


class StreamOptions(BaseModel):
    include_usage: bool = False


class ChatTemplateArgs(BaseModel):
    """`chat_template_kwargs`, as vLLM takes it; only what the served templates read is accepted."""

    model_config = ConfigDict(extra="forbid")
    enable_thinking: bool | None = None  # Qwen3: false answers without a <think> block


class ChatCompletionRequest(BaseModel):
    # Unknown OpenAI fields (user, metadata, ...) are accepted and ignored, as other servers do.
    model_config = ConfigDict(extra="ignore")
    model: str
    messages: list[ChatMessage] = Field(min_length=1)
    max_tokens: MaxNewTokens | None = None
    max_completion_tokens: MaxNewTokens | None = None
    temperature: Temperature | None = None
    top_p: TopP | None = None
    seed: Seed | None = None
    stop: str | list[str] | None = None
    n: int | None = Field(default=None, ge=1, le=128)
    stream: bool = False
    stream_options: StreamOptions | None = None
    chat_template_kwargs: ChatTemplateArgs | None = None

    @field_validator("stop")
    @classmethod
    def _stop(cls, value: str | list[str] | None) -> list[str] | None:
        stops = [value] if isinstance(value, str) else value
        if stops is not None and len(stops) > 4:
            raise ValueError("at most 4 stop sequences")
        return stops

    def sampling(self) -> SamplingOverrides:
        return SamplingOverrides(
            max_new_tokens=self.max_completion_tokens or self.max_tokens,
            temperature=self.temperature,
            top_p=self.top_p,
            seed=self.seed,
        )

    def template_args(self) -> dict[str, object] | None:
        args = self.chat_template_kwargs
        return args.model_dump(exclude_none=True) if args is not None else None


def _finish_reason(reason: str) -> str:
    # OpenAI has no "cancelled": a reply cut short by the server ends like one cut by a stop sequence.
    return "length" if reason == "length" else "stop"


@router.get("/models")
async def list_models(service: ServiceDep, _principal: PrincipalDep) -> dict[str, Any]:
    name = service.settings.model_name
    model = {"id": name, "object": "model", "created": service.started_at, "owned_by": "qwen-chat"}
    return {"object": "list", "data": [model]}


@router.post("/chat/completions", response_model=None, responses=SSE_RESPONSE)
async def chat_completions(
    body: ChatCompletionRequest, service: ServiceDep, principal: PrincipalDep
) -> dict[str, Any] | EventSourceResponse:
    settings = service.settings
    if body.n not in (None, 1):
        raise Refusal(ErrorCode.BAD_REQUEST, "only n=1 is supported", param="n", status=400)
    if body.model != settings.model_name:
        message = f"the model {body.model!r} does not exist; use {settings.model_name!r}"
        raise Refusal(ErrorCode.MODEL_NOT_FOUND, message, param="model")
    limit_field = "max_completion_tokens" if body.max_completion_tokens is not None else "max_tokens"
    params = resolve(settings, body.sampling(), limit_field)
    messages = [m.as_message() for m in body.messages]
    admission = service.admission
    stream = await admission.start(
        principal.user,
        Transport.OPENAI,
        messages,
        params,
        body.stop,  # type: ignore[arg-type]
        template_args=body.template_args(),
    )
    completion_id = f"chatcmpl-{uuid.uuid4().hex}"
    created = int(time.time())
    if not body.stream:
        return await _complete(stream, completion_id, created, settings.model_name)
    include_usage = bool(body.stream_options and body.stream_options.include_usage)
    chunks = _chunks(stream, completion_id, created, settings.model_name, include_usage)
    return EventSourceResponse(chunks, headers={"Cache-Control": "no-cache", "X-Accel-Buffering": "no"})


async def _complete(stream: ChatStream, completion_id: str, created: int, model: str) -> dict[str, Any]:
    text, reasoning, finished = await stream.collect()
    message: dict[str, Any] = {"role": "assistant", "content": text}
    if reasoning is not None:  # a model that thinks first: its thinking apart, as vLLM's reasoning parsers
        message["reasoning_content"] = reasoning or None
    return {
        "id": completion_id,
        "object": "chat.completion",
        "created": created,
        "model": model,
        "choices": [
            {
                "index": 0,
                "message": message,
                "finish_reason": _finish_reason(finished.reason),
                "logprobs": None,
            }
        ],
        "usage": _usage(finished),
    }


def _usage(event: Finished) -> dict[str, int]:
    total = event.prompt_tokens + event.completion_tokens
    return {
        "prompt_tokens": event.prompt_tokens,
        "completion_tokens": event.completion_tokens,
        "total_tokens": total,
    }


async def _chunks(
    stream: ChatStream, completion_id: str, created: int, model: str, include_usage: bool
) -> AsyncIterator[bytes]:
    """The SSE stream: a role chunk, content chunks, a finish chunk, optionally usage, then [DONE]."""

    def chunk(delta: dict[str, Any], finish_reason: str | None = None, **extra: Any) -> bytes:
        data = {
            "id": completion_id,
            "object": "chat.completion.chunk",
            "created": created,
            "model": model,
            "choices": [{"index": 0, "delta": delta, "finish_reason": finish_reason, "logprobs": None}],
        }
        if include_usage:
            data["usage"] = None
        data.update(extra)
        return format_sse_event(data_str=json.dumps(data, ensure_ascii=False))

    try:
        yield chunk({"role": "assistant", "content": ""})
        async for event in stream.events():
            if isinstance(event, Finished):
                yield chunk({}, _finish_reason(event.reason))
                if include_usage:
                    yield chunk({}, None, choices=[], usage=_usage(event))
            elif isinstance(event, ReasoningDelta):
                yield chunk({"reasoning_content": event.text})
            else:
                yield chunk({"content": event.text})
        yield format_sse_event(data_str="[DONE]")
    finally:
        await stream.aclose()
