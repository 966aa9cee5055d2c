"""`POST /v1/chat/completions`, plain and streaming: tools and tool calls, structured outputs, logprobs.

Tools reach the model through its chat template; with `tool_choice` `auto` the reply's
`<tool_call>` blocks become `tool_calls` (chat/tool_calls.py), and with `required` or a named function a
grammar makes the whole reply a call (or a list of calls, with `parallel_tool_calls`), as vLLM does.
`response_format` becomes that grammar directly (engine/grammar_spec.py).
"""

from __future__ import annotations

from collections.abc import AsyncGenerator
from typing import Any

from fastapi import APIRouter
from fastapi.responses import JSONResponse
from fastapi.sse import EventSourceResponse

from qwen_chat.chat.reasoning import ReasoningDelta
from qwen_chat.chat.reply_options import reply_options
from qwen_chat.chat.stream import ChatStream, Reply
from qwen_chat.chat.tool_calls import ToolCallDelta
from qwen_chat.engine.api.interface import Finished
from qwen_chat.http.bearer import PrincipalDep
from qwen_chat.http.deadline import DeadlineDep
from qwen_chat.http.errors import SSE_RESPONSE
from qwen_chat.http.openai_api import (
    Envelope,
    check_request,
    cut_response,
    cut_short,
    error_event,
    finish_reason,
    sse,
    usage,
)
from qwen_chat.http.openai_logprobs import TokenTexts, chat_logprobs
from qwen_chat.http.openai_schema import ChatCompletionRequest, as_message
from qwen_chat.metrics import Transport
from qwen_chat.sampling_params import resolve
from qwen_chat.service import ServiceDep

router = APIRouter(prefix="/v1", tags=["openai"])


@router.post("/chat/completions", response_model=None, responses=SSE_RESPONSE)
async def chat_completions(
    body: ChatCompletionRequest, service: ServiceDep, principal: PrincipalDep, deadline: DeadlineDep
) -> dict[str, Any] | EventSourceResponse | JSONResponse:
    settings = service.settings
    check_request(settings, body.model, body.n)
    limit_field = "max_completion_tokens" if body.max_completion_tokens is not None else "max_tokens"
    overrides = body.overrides(body.max_completion_tokens or body.max_tokens)
    params = resolve(service.engine.sampling_defaults, overrides, limit_field)
    top_logprobs = (body.top_logprobs or 0) if body.logprobs else None
    options = reply_options(
        body.tools, body.tool_choice, body.parallel_tool_calls, body.response_format, top_logprobs
    )
    stream = await service.admission.start(
        principal.user,
        Transport.OPENAI,
        [as_message(m) for m in body.messages],
        params,
        body.stop,  # type: ignore[arg-type]
        template_args=body.template_args(),
        options=options,
        deadline=deadline,
    )
    envelope = Envelope(
        "chatcmpl", "chat.completion", settings.model_name, body.include_usage, body.continuous_usage
    )
    texts = TokenTexts(service.engine.prompts.tokenizer) if body.logprobs else None
    if not body.stream:
        reply = await stream.collect()
        if (cut := cut_short(stream, reply.finished.reason)) is not None:
            return cut_response(cut)
        return _message(reply, stream, envelope, texts)
    envelope.fields["object"] = "chat.completion.chunk"
    return sse(stream, _chunks(stream, envelope, texts))


def _finish(reason: str, called: bool) -> str:
    return "tool_calls" if called and reason != "length" else finish_reason(reason)


def _message(
    reply: Reply, stream: ChatStream, envelope: Envelope, texts: TokenTexts | None
) -> dict[str, Any]:
    message: dict[str, Any] = {"role": "assistant", "content": reply.text}
    if reply.tool_calls:
        message["content"] = reply.text if reply.text.strip() else None
        message["tool_calls"] = [call.openai() for call in reply.tool_calls]
    if (
        reply.reasoning is not None
    ):  # a model that thinks first: its thinking apart, as vLLM's reasoning parsers
        message["reasoning_content"] = reply.reasoning or None
    choice = {
        "index": 0,
        "message": message,
        "finish_reason": _finish(reply.finished.reason, bool(reply.tool_calls)),
        "logprobs": chat_logprobs(stream.take_logprobs(), texts) if texts is not None else None,
    }
    return envelope.body([choice], usage=usage(reply.finished))


async def _chunks(stream: ChatStream, envelope: Envelope, texts: TokenTexts | None) -> AsyncGenerator[bytes]:
    """The SSE stream: a role chunk, content (or reasoning, or tool-call) chunks, a finish chunk, optionally
    usage (`sse` adds [DONE]). A tool call goes out as the SDK assembles it: its id and name, then its
    arguments."""

    prompt_tokens = len(stream.request.prompt_ids)

    def chunk(delta: dict[str, Any], reason: str | None = None, completion_tokens: int = 0) -> bytes:
        logprobs = None
        if texts is not None and (entries := stream.take_logprobs()):
            logprobs = chat_logprobs(entries, texts)
        choice = {"index": 0, "delta": delta, "finish_reason": reason, "logprobs": logprobs}
        return envelope.event([choice], (prompt_tokens, completion_tokens))

    called = False
    yield chunk({"role": "assistant", "content": ""})
    async for event in stream.events():
        if isinstance(event, Finished):
            if (cut := cut_short(stream, event.reason)) is not None:
                yield error_event(cut)
                continue
            yield chunk({}, _finish(event.reason, called), event.completion_tokens)
            if envelope.include_usage:
                yield envelope.event([], usage=usage(event))
        elif isinstance(event, ReasoningDelta):
            yield chunk({"reasoning_content": event.text}, None, event.completion_tokens)
        elif isinstance(event, ToolCallDelta):
            called = True
            call = event.call
            head = {"index": event.index, "id": call.id, "type": "function"}
            named = {"tool_calls": [{**head, "function": {"name": call.name, "arguments": ""}}]}
            yield chunk(named, None, event.completion_tokens)
            arguments = {"index": event.index, "function": {"arguments": call.arguments}}
            yield chunk({"tool_calls": [arguments]}, None, event.completion_tokens)
        else:
            yield chunk({"content": event.text}, None, event.completion_tokens)
