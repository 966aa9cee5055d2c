"""The seeds' API: `POST /chat` answers at once, `POST /chat_stream` streams Server-Sent Events.

Body: {"prompt": "...", "history": [[user, assistant], ...], "max_new_tokens" (or "max_length"),
"temperature", "top_p"}. The reply: {"response", "history" (with this exchange added), "usage", "time"}.
"""

from __future__ import annotations

import datetime as dt
import json
from collections.abc import AsyncGenerator
from typing import Annotated

from fastapi import APIRouter
from fastapi.sse import EventSourceResponse, format_sse_event
from pydantic import AliasChoices, BaseModel, ConfigDict, Field, StringConstraints

from qwen_chat.chat.reasoning import ReasoningDelta
from qwen_chat.chat.stream import ChatStream
from qwen_chat.engine.api.interface import Finished, TextDelta
from qwen_chat.engine.model.prompts import Message
from qwen_chat.http.bearer import PrincipalDep
from qwen_chat.http.deadline import DeadlineDep
from qwen_chat.http.errors import SSE_RESPONSE
from qwen_chat.http.sse_reply import ended_in_band
from qwen_chat.metrics import Transport
from qwen_chat.sampling_params import MaxNewTokens, SamplingOverrides, Temperature, TopP, resolve
from qwen_chat.service import Service, ServiceDep

# "simple" (the tag, `SimpleChatRequest`, `SimpleChatResponse`) is how the published OpenAPI schema names
# this API; in the code, "simple" is otherwise only the engine of QWEN_CHAT_ENGINE=simple.
router = APIRouter(tags=["simple"])

Text = Annotated[str, StringConstraints(max_length=200_000)]


class SimpleChatRequest(BaseModel):
    model_config = ConfigDict(extra="forbid", populate_by_name=True)
    prompt: Annotated[str, StringConstraints(min_length=1, max_length=200_000, pattern=r"\S")]
    history: list[tuple[Text, Text]] = Field(default_factory=list, max_length=1000)
    max_new_tokens: MaxNewTokens | None = Field(
        default=None, validation_alias=AliasChoices("max_new_tokens", "max_length")
    )
    temperature: Temperature | None = None
    top_p: TopP | None = None

    def messages(self) -> list[Message]:
        turns: list[Message] = []
        for user, assistant in self.history:
            turns += [{"role": "user", "content": user}, {"role": "assistant", "content": assistant}]
        return [*turns, {"role": "user", "content": self.prompt}]

    def sampling(self) -> SamplingOverrides:
        return SamplingOverrides(
            max_new_tokens=self.max_new_tokens, temperature=self.temperature, top_p=self.top_p
        )


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
    reasoning: str | None = None  # a model that thinks first (Qwen3): its thinking, apart from `response`


async def _start(
    body: SimpleChatRequest, service: Service, user: str, transport: Transport, deadline: float | None
) -> ChatStream:
    params = resolve(service.engine.sampling_defaults, body.sampling())
    return await service.admission.start(user, transport, body.messages(), params, deadline=deadline)


def _result(
    body: SimpleChatRequest, text: str, finished: Finished, reasoning: str | None = None
) -> SimpleChatResponse:
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
        reasoning=reasoning,
    )


@router.post("/chat")
async def chat(
    body: SimpleChatRequest, service: ServiceDep, principal: PrincipalDep, deadline: DeadlineDep
) -> SimpleChatResponse:
    """The whole reply; one its deadline cut short is what it said by then, `finish_reason: "timeout"`."""
    stream = await _start(body, service, principal.user, Transport.HTTP, deadline)
    reply = await stream.collect()
    return _result(body, reply.text, reply.finished, reply.reasoning)


@router.post("/chat_stream", response_model=None, responses=SSE_RESPONSE)
async def chat_stream(
    body: SimpleChatRequest, service: ServiceDep, principal: PrincipalDep, deadline: DeadlineDep
) -> EventSourceResponse:
    """One `{"text": ...}` event per delta (`{"reasoning": ...}` for a thinking model's thinking, first),
    then a `done` event holding what `/chat` returns (`finish_reason: "timeout"` past the deadline)."""
    stream = await _start(body, service, principal.user, Transport.SSE, deadline)
    events = ended_in_band(stream, _events(body, stream), lambda refusal: [refusal.sse_event()])
    return EventSourceResponse(events, headers={"Cache-Control": "no-cache"})


async def _events(body: SimpleChatRequest, stream: ChatStream) -> AsyncGenerator[bytes]:
    """The reply's events; a failure ends them with the `error` event instead (`http/sse_reply.py`)."""
    parts: list[str] = []
    thoughts: list[str] = []
    async for event in stream.events():
        if isinstance(event, Finished):
            reasoning = "".join(thoughts) if stream.reasoning is not None else None
            result = _result(body, "".join(parts), event, reasoning)
            yield format_sse_event(data_str=result.model_dump_json(), event="done")
        elif isinstance(event, ReasoningDelta):
            thoughts.append(event.text)
            yield format_sse_event(data_str=json.dumps({"reasoning": event.text}, ensure_ascii=False))
        elif isinstance(event, TextDelta):  # the seed API takes no tools, so there are no calls
            parts.append(event.text)
            yield format_sse_event(data_str=json.dumps({"text": event.text}, ensure_ascii=False))
