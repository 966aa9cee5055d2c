"""The seeds' simple API: `POST /chat` answers at once, `POST /chat_stream` streams Server-Sent Events.

Body: {"prompt": "...", "history": [[user, assistant], ...], "max_new_tokens" (or "max_length"),
"temperature", "top_p"}. The reply: {"response", "history" (with this exchange added), "usage", "time"}.
"""

from __future__ import annotations

import datetime as dt
import json
from collections.abc import AsyncIterator
from typing import Annotated, Any

from fastapi import APIRouter, Request
from fastapi.sse import EventSourceResponse, format_sse_event
from pydantic import AliasChoices, BaseModel, ConfigDict, Field, StringConstraints

from qwen_chat.chat_service import ChatStream, sampling_params, start_chat
from qwen_chat.engine import EngineError, Finished
from qwen_chat.http_common import SSE_RESPONSE, PrincipalDep
from qwen_chat.prompts import Message

router = APIRouter(tags=["simple"])

Text = Annotated[str, StringConstraints(max_length=200_000)]


class SimpleChatRequest(BaseModel):
    model_config = ConfigDict(extra="forbid", populate_by_name=True)
    prompt: Annotated[str, StringConstraints(min_length=1, max_length=200_000, pattern=r"\S")]
    history: list[tuple[Text, Text]] = Field(default_factory=list, max_length=1000)
    max_new_tokens: int | None = Field(
        default=None, ge=1, validation_alias=AliasChoices("max_new_tokens", "max_length")
    )
    temperature: float | None = Field(default=None, ge=0.0, le=2.0)
    top_p: float | None = Field(default=None, gt=0.0, le=1.0)

    def messages(self) -> list[Message]:
        turns: list[Message] = []
        for user, assistant in self.history:
            turns += [{"role": "user", "content": user}, {"role": "assistant", "content": assistant}]
        return [*turns, {"role": "user", "content": self.prompt}]


class Usage(BaseModel):
    prompt_tokens: int
    completion_tokens: int
    total_tokens: int


class SimpleChatResponse(BaseModel):
    response: str
    history: list[tuple[str, str]]
    usage: Usage
    time: str
    finish_reason: str


async def _start(body: SimpleChatRequest, request: Request, user: str, transport: str) -> ChatStream:
    settings = request.app.state.settings
    params = sampling_params(settings, body.max_new_tokens, body.temperature, body.top_p)
    return await start_chat(request.app.state, user, transport, body.messages(), params)


def _result(body: SimpleChatRequest, text: str, finished: Finished) -> SimpleChatResponse:
    total = finished.prompt_tokens + finished.completion_tokens
    return SimpleChatResponse(
        response=text,
        history=[*body.history, (body.prompt, text)],
        usage=Usage(
            prompt_tokens=finished.prompt_tokens,
            completion_tokens=finished.completion_tokens,
            total_tokens=total,
        ),
        time=dt.datetime.now().strftime("%Y-%m-%d %H:%M:%S"),
        finish_reason=finished.reason,
    )


@router.post("/chat")
async def chat(body: SimpleChatRequest, request: Request, principal: PrincipalDep) -> SimpleChatResponse:
    stream = await _start(body, request, principal.user, "http")
    parts: list[str] = []
    try:
        async for event in stream.events():
            if isinstance(event, Finished):
                return _result(body, "".join(parts), event)
            parts.append(event.text)
    finally:
        await stream.aclose()
    raise AssertionError("the engine ended without finishing")  # pragma: no cover


@router.post("/chat_stream", response_model=None, responses=SSE_RESPONSE)
async def chat_stream(
    body: SimpleChatRequest, request: Request, principal: PrincipalDep
) -> EventSourceResponse:
    """One `{"text": ...}` event per delta, then a `done` event holding what `/chat` returns."""
    stream = await _start(body, request, principal.user, "sse")
    return EventSourceResponse(_events(body, stream), headers={"Cache-Control": "no-cache"})


async def _events(body: SimpleChatRequest, stream: ChatStream) -> AsyncIterator[bytes]:
    parts: list[str] = []
    try:
        async for event in stream.events():
            if isinstance(event, Finished):
                result = _result(body, "".join(parts), event)
                yield format_sse_event(data_str=result.model_dump_json(), event="done")
            else:
                parts.append(event.text)
                yield format_sse_event(data_str=json.dumps({"text": event.text}, ensure_ascii=False))
    except EngineError:
        error: dict[str, Any] = {
            "error": {"message": "the model failed to generate a reply", "code": "internal"}
        }
        yield format_sse_event(data_str=json.dumps(error), event="error")
    finally:
        await stream.aclose()
