"""`POST /v1/responses`: OpenAI's Responses API, stateless, plain and streaming, so clients that default to it
(the `openai` SDK's `client.responses`, agent frameworks) work with only `base_url` and `api_key` set.

It is a chat like `/v1/chat/completions` (`http/openai_chat.py`): the same key, admission, fairness, limits,
metrics and traces, the same tools, grammar and reasoning split; only the body (`responses_schema.py`) and
the reply's shape (`responses_events.py`) differ.
"""

from __future__ import annotations

import json
from collections.abc import AsyncGenerator
from typing import Any

from fastapi import APIRouter
from fastapi.responses import JSONResponse
from fastapi.sse import EventSourceResponse, format_sse_event

from qwen_chat.chat.reply_options import reply_options
from qwen_chat.chat.stream import ChatStream
from qwen_chat.engine.api.interface import EngineError, Finished
from qwen_chat.http.bearer import PrincipalDep
from qwen_chat.http.deadline import DeadlineDep
from qwen_chat.http.errors import SSE_RESPONSE
from qwen_chat.http.openai_api import SSE_HEADERS, check_request, cut_response, cut_short
from qwen_chat.http.responses_events import Event, ResponseBuilder
from qwen_chat.http.responses_schema import ResponsesRequest
from qwen_chat.http.sse_reply import ended_in_band
from qwen_chat.metrics import Transport
from qwen_chat.sampling_params import SamplingParams, resolve
from qwen_chat.service import ServiceDep

router = APIRouter(prefix="/v1", tags=["openai"])


@router.post("/responses", response_model=None, responses=SSE_RESPONSE)
async def create_response(
    body: ResponsesRequest, service: ServiceDep, principal: PrincipalDep, deadline: DeadlineDep
) -> dict[str, Any] | EventSourceResponse | JSONResponse:
    settings = service.settings
    check_request(settings, body.model or settings.model_name, None)
    params = resolve(service.engine.sampling_defaults, body.overrides(), "max_output_tokens")
    tools = body.chat_tools()
    choice, text_format = body.chat_tool_choice(), body.response_format()
    options = reply_options(tools, choice, body.parallel_tool_calls, text_format, format_field="text.format")
    stream = await service.admission.start(
        principal.user,
        Transport.OPENAI,
        body.messages(),
        params,
        template_args=body.template_args(),
        options=options,
        deadline=deadline,
        field="input",
    )
    builder = ResponseBuilder(settings.model_name, _echo(body, params))
    if not body.stream:
        return await _whole(stream, builder)
    events = _stream(stream, builder)
    failed = ended_in_band(stream, events, lambda refusal: [_sse(e) for e in builder.failed(refusal)])
    return EventSourceResponse(failed, headers=SSE_HEADERS)


def _echo(body: ResponsesRequest, params: SamplingParams) -> dict[str, Any]:
    """What the response repeats of its request, as OpenAI's does: the values the reply was sampled with."""
    choice = body.tool_choice or ("auto" if body.tools else "none")
    text_format = body.text.format if body.text is not None else None
    shown_format = (
        text_format.model_dump(by_alias=True, exclude_none=True) if text_format else {"type": "text"}
    )
    return {
        "instructions": body.instructions,
        "max_output_tokens": params.max_new_tokens,
        "temperature": params.temperature,
        "top_p": params.top_p,
        "tools": [tool.model_dump(exclude_none=True) for tool in body.tools or []],
        "tool_choice": choice if isinstance(choice, str) else choice.model_dump(),
        "parallel_tool_calls": body.parallel_tool_calls is not False,
        "text": {"format": shown_format},
        "reasoning": body.reasoning.model_dump(exclude_none=True) if body.reasoning is not None else None,
        "store": False,
        "previous_response_id": None,
        "metadata": body.metadata or {},
        "truncation": "auto",
        "background": False,
    }


async def _whole(stream: ChatStream, builder: ResponseBuilder) -> dict[str, Any] | JSONResponse:
    """A response answered at once: the reply built as a stream's is, then the last event's response (or,
    cut short by the server, its error). The events are read to their end, which counts the reply."""
    last: list[Event] = []
    cut = None
    try:
        async for event in stream.events():  # which close the stream however they end
            if isinstance(event, Finished):
                cut = cut_short(stream, event.reason)
                last = builder.finish(event)
            else:
                builder.feed(event)
    except EngineError as exc:  # logged as a streamed reply's failure is; answered by the HTTP handler
        stream.failure(exc)
        raise
    if cut is not None:
        return cut_response(cut)
    assert last, "the engine ended without finishing"
    response: dict[str, Any] = last[-1]["response"]
    return response


async def _stream(stream: ChatStream, builder: ResponseBuilder) -> AsyncGenerator[bytes]:
    for event in builder.start():
        yield _sse(event)
    async for delta in stream.events():
        if isinstance(delta, Finished):
            cut = cut_short(stream, delta.reason)
            events = builder.failed(cut) if cut is not None else builder.finish(delta)
        else:
            events = builder.feed(delta)
        for event in events:
            yield _sse(event)


def _sse(event: Event) -> bytes:
    return format_sse_event(event=event["type"], data_str=json.dumps(event, ensure_ascii=False))
