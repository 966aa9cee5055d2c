"""`POST /v1/completions`, plain and streaming: a raw prompt (text or token ids) continued as it is, with no
chat template, under the same keys, limits, queue and metrics as chat. The Gateway API Inference
Extension's model-server protocol asks every server it routes to for it."""

from __future__ import annotations

import asyncio
from collections.abc import AsyncGenerator
from typing import Any

from fastapi import APIRouter
from fastapi.responses import JSONResponse
from fastapi.sse import EventSourceResponse

from qwen_chat.chat.reply_options import ReplyOptions
from qwen_chat.chat.stream import ChatStream
from qwen_chat.chat.surrogates import refuse_non_text
from qwen_chat.engine.api.interface import Finished, TextDelta
from qwen_chat.engine.model.prompts import Prompts
from qwen_chat.errors import ErrorCode, Refusal
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
from qwen_chat.http.openai_logprobs import TokenTexts, completion_logprobs
from qwen_chat.http.openai_schema import CompletionRequest
from qwen_chat.metrics import Transport
from qwen_chat.sampling_params import resolve
from qwen_chat.service import Service, ServiceDep

router = APIRouter(prefix="/v1", tags=["openai"])


async def prompt_ids(service: Service, prompt: str | list[int]) -> list[int]:
    """Text is encoded as COMPLETIONS_CONTROL_TOKENS says; token ids are taken as they are, any of them
    (`/tokenize` encodes a prompt the same way)."""
    prompts = service.admission.prompts()
    if isinstance(prompt, str):
        refuse_non_text(prompt, "prompt", "the prompt")
        controls = service.settings.completions_control_tokens
        return await asyncio.to_thread(prompts.encode_prompt, prompt, controls)
    return checked_ids(prompts, prompt, "prompt")


def checked_ids(prompts: Prompts, ids: list[int], param: str) -> list[int]:
    """Token ids of the vocabulary, as they are; any other is a 400 naming `param`."""
    vocab = len(prompts.tokenizer)
    if any(not 0 <= token < vocab for token in ids):
        message = f"{param}: token ids must be in [0, {vocab})"
        raise Refusal(ErrorCode.BAD_REQUEST, message, param=param, status=400)
    return ids


@router.post("/completions", response_model=None, responses=SSE_RESPONSE)
async def completions(
    body: CompletionRequest, service: ServiceDep, principal: PrincipalDep, deadline: DeadlineDep
) -> dict[str, Any] | EventSourceResponse | JSONResponse:
    settings = service.settings
    check_request(settings, body.model, body.n)
    params = resolve(service.engine.sampling_defaults, body.overrides(body.max_tokens), "max_tokens")
    ids = await prompt_ids(service, body.prompt)  # type: ignore[arg-type]
    options = ReplyOptions(top_logprobs=body.logprobs)
    stream = await service.admission.start_prompt(
        principal.user,
        Transport.OPENAI,
        ids,
        params,
        body.stop,  # type: ignore[arg-type]
        options,
        deadline=deadline,
    )
    envelope = Envelope(
        "cmpl", "text_completion", settings.model_name, body.include_usage, body.continuous_usage
    )
    texts = TokenTexts(service.engine.prompts.tokenizer) if body.logprobs is not None else None
    if not body.stream:
        reply = await stream.collect()
        if (cut := cut_short(stream, reply.finished.reason)) is not None:
            return cut_response(cut)
        logprobs = completion_logprobs(stream.take_logprobs(), texts, 0) if texts is not None else None
        choice = _choice(reply.text, logprobs, finish_reason(reply.finished.reason))
        return envelope.body([choice], usage=usage(reply.finished))
    return sse(stream, _chunks(stream, envelope, texts))


def _choice(text: str, logprobs: dict[str, Any] | None, reason: str | None) -> dict[str, Any]:
    return {"index": 0, "text": text, "logprobs": logprobs, "finish_reason": reason}


async def _chunks(stream: ChatStream, envelope: Envelope, texts: TokenTexts | None) -> AsyncGenerator[bytes]:
    offset, prompt_tokens = 0, len(stream.request.prompt_ids)
    async for event in stream.events():
        if isinstance(event, Finished):
            if (cut := cut_short(stream, event.reason)) is not None:
                yield error_event(cut)
                continue
            progress = (prompt_tokens, event.completion_tokens)
            yield envelope.event([_choice("", None, finish_reason(event.reason))], progress)
            if envelope.include_usage:
                yield envelope.event([], usage=usage(event))
        elif isinstance(event, TextDelta):
            logprobs = None
            if texts is not None:
                logprobs = completion_logprobs(stream.take_logprobs(), texts, offset)
            offset += len(event.text)
            yield envelope.event(
                [_choice(event.text, logprobs, None)], (prompt_tokens, event.completion_tokens)
            )
