"""OpenAI-compatible `POST /v1/chat/completions` (plain and streaming) and `GET /v1/models`, so the
official `openai` SDK works with only `base_url` and `api_key` set."""

from __future__ import annotations

import json
import time
import uuid
from collections.abc import AsyncIterator
from typing import Annotated, Any, Literal

from fastapi import APIRouter, Request
from fastapi.sse import EventSourceResponse, format_sse_event
from pydantic import BaseModel, ConfigDict, Field, field_validator

from qwen_chat.chat_service import ChatRefused, ChatStream, sampling_params, start_chat
from qwen_chat.engine import Finished
from qwen_chat.http_common import SSE_RESPONSE, PrincipalDep
from qwen_chat.prompts import Message

router = APIRouter(prefix="/v1", tags=["openai"])
TRANSPORT = "openai"


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


class ChatCompletionRequest(BaseModel):
    # Unknown OpenAI fields (user, metadata, ...) are accepted and ignored, as other servers do.
    model_config = ConfigDict(extra="ignore")
    model: str
    messages: list[ChatMessage] = Field(min_length=1)
    max_tokens: int | None = Field(default=None, ge=1)
    max_completion_tokens: int | None = Field(default=None, ge=1)
    temperature: float | None = Field(default=None, ge=0.0, le=2.0)
    top_p: float | None = Field(default=None, gt=0.0, le=1.0)
    seed: int | None = Field(default=None, ge=0, le=2**63 - 1)
    stop: str | list[str] | None = None
    n: int | None = Field(default=None, ge=1, le=128)
    stream: bool = False
    stream_options: StreamOptions | None = None

    @field_validator("stop")
    @classmethod
    def _stop(cls, value: str | list[str] | None) -> list[str] | None:
        stops = [value] if isinstance(value, str) else value
        if stops is not None and len(stops) > 4:
            raise ValueError("at most 4 stop sequences")
        return stops


def _finish_reason(reason: str) -> str:
    # OpenAI has no "cancelled": a reply cut short by the server ends like one cut by a stop sequence.
    return "length" if reason == "length" else "stop"


@router.get("/models")
async def list_models(request: Request, _principal: PrincipalDep) -> dict[str, Any]:
    name = request.app.state.settings.model_name
    model = {"id": name, "object": "model", "created": request.app.state.started_at, "owned_by": "qwen-chat"}
    return {"object": "list", "data": [model]}


@router.post("/chat/completions", response_model=None, responses=SSE_RESPONSE)
async def chat_completions(
    body: ChatCompletionRequest, request: Request, principal: PrincipalDep
) -> dict[str, Any] | EventSourceResponse:
    state = request.app.state
    settings = state.settings
    if body.n not in (None, 1):
        raise ChatRefused("bad_request", "only n=1 is supported", 400, param="n")
    if body.model != settings.model_name:
        raise ChatRefused(
            "model_not_found",
            f"the model {body.model!r} does not exist; use {settings.model_name!r}",
            404,
            param="model",
        )
    limit_field = "max_completion_tokens" if body.max_completion_tokens is not None else "max_tokens"
    params = sampling_params(
        settings,
        body.max_completion_tokens or body.max_tokens,
        body.temperature,
        body.top_p,
        None,
        body.seed,
        limit_field,
    )
    messages = [m.as_message() for m in body.messages]
    stream = await start_chat(state, principal.user, TRANSPORT, messages, params, body.stop)  # type: ignore[arg-type]
    completion_id = f"chatcmpl-{uuid.uuid4().hex}"
    created = int(time.time())
    if not body.stream:
        return await _complete(stream, completion_id, created, settings.model_name)
    include_usage = bool(body.stream_options and body.stream_options.include_usage)
    chunks = _chunks(stream, completion_id, created, settings.model_name, include_usage)
    return EventSourceResponse(chunks, headers={"Cache-Control": "no-cache", "X-Accel-Buffering": "no"})


async def _complete(stream: ChatStream, completion_id: str, created: int, model: str) -> dict[str, Any]:
    text: list[str] = []
    finished: Finished | None = None
    try:
        async for event in stream.events():
            if isinstance(event, Finished):
                finished = event
            else:
                text.append(event.text)
    finally:
        await stream.aclose()
    assert finished is not None
    return {
        "id": completion_id,
        "object": "chat.completion",
        "created": created,
        "model": model,
        "choices": [
            {
                "index": 0,
                "message": {"role": "assistant", "content": "".join(text)},
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
            else:
                yield chunk({"content": event.text})
        yield format_sse_event(data_str="[DONE]")
    finally:
        await stream.aclose()
