"""OpenAI-compatible `/v1`, so the official `openai` SDK works with only `base_url` and `api_key` set:
`GET /v1/models` here, with what the two generation endpoints share; `/v1/chat/completions` in
`openai_chat.py`, `/v1/completions` in `openai_completions.py`, their bodies in `openai_schema.py`."""

from __future__ import annotations

import json
import time
import uuid
from collections.abc import AsyncGenerator
from contextlib import aclosing
from typing import Any

from fastapi import APIRouter
from fastapi.responses import JSONResponse
from fastapi.sse import EventSourceResponse, format_sse_event

from qwen_chat.chat.stream import ChatStream
from qwen_chat.engine.api.interface import EngineState, Finished
from qwen_chat.errors import ErrorCode, Refusal
from qwen_chat.http.bearer import PrincipalDep
from qwen_chat.http.sse_reply import ended_in_band
from qwen_chat.service import ServiceDep
from qwen_chat.settings import Settings

router = APIRouter(prefix="/v1", tags=["openai"])
SSE_HEADERS = {"Cache-Control": "no-cache", "X-Accel-Buffering": "no"}
DONE = format_sse_event(data_str="[DONE]")


@router.get("/models")
async def list_models(service: ServiceDep, _principal: PrincipalDep) -> dict[str, Any]:
    name, engine = service.settings.model_name, service.engine
    model = {
        "id": name,
        "object": "model",
        "created": service.started_at,
        "owned_by": "qwen-chat",
        # vLLM's: the context a prompt and its reply share (null until the model has loaded), what the id
        # serves (MODEL), and no base model (no adapters are served).
        "max_model_len": engine.prompts.context_length if engine.state is EngineState.READY else None,
        "root": service.settings.model,
        "parent": None,
        # qwen-chat's own: the defaults a request's sampling starts from, and where each comes from (null
        # until the model has loaded: the checkpoint's are known then).
        "sampling_defaults": engine.sampling_defaults.shown() if engine.state is EngineState.READY else None,
    }
    return {"object": "list", "data": [model]}


def check_request(settings: Settings, model: str, n: int | None) -> None:
    """What both generation endpoints refuse (and count as rejected) before admission."""
    if n not in (None, 1):
        raise Refusal(ErrorCode.BAD_REQUEST, "only n=1 is supported", param="n", status=400)
    if model != settings.model_name:
        message = f"the model {model!r} does not exist; use {settings.model_name!r}"
        raise Refusal(ErrorCode.MODEL_NOT_FOUND, message, param="model")


def finish_reason(reason: str) -> str:
    # OpenAI has no "cancelled" or "timeout": a reply the server cut short ends with an error instead
    # (`cut_short`), and one the service ended at a stop string or a finished tool call already says `stop`.
    return "length" if reason == "length" else "stop"


def cut_short(stream: ChatStream, reason: str) -> Refusal | None:
    """Why the server cut the reply short, if it did: the reply is not whole, and no finish reason of OpenAI's
    says so, so the client is told with an error instead. A `/v1` client cannot cancel (one that goes away
    reads nothing more), so every `cancelled` here is the server's: a drain's timeout says so (`cut_by`), an
    engine closed without a drain (a dev server stopping) does not. A `timeout` (the request's deadline) is
    the error `timeout`, a 504 for a whole reply."""
    if reason not in ("cancelled", "timeout"):
        return None
    return stream.cut_by or Refusal(ErrorCode.OVERLOADED, "the server stopped before the reply was finished")


def cut_response(refusal: Refusal) -> JSONResponse:
    """A whole-reply request the server cut short: its error (counted `cancelled` or `timeout` as the reply
    ended)."""
    return refusal.openai_response(openai_api=True)


def usage(event: Finished) -> dict[str, Any]:
    total = event.prompt_tokens + event.completion_tokens
    return {
        "prompt_tokens": event.prompt_tokens,
        "completion_tokens": event.completion_tokens,
        "total_tokens": total,
        # Prompt tokens resumed from a kept conversation state rather than prefilled (OpenAI's field).
        "prompt_tokens_details": {"cached_tokens": event.cached_tokens},
    }


class Envelope:
    """The id, object, created and model every response and chunk of one request carries."""

    def __init__(
        self, prefix: str, obj: str, model: str, include_usage: bool = False, continuous_usage: bool = False
    ) -> None:
        self.fields = {"id": f"{prefix}-{uuid.uuid4().hex}", "object": obj, "created": int(time.time())}
        self.fields["model"] = model
        self.include_usage = include_usage
        # vLLM's `stream_options.continuous_usage_stats` (with include_usage, as vLLM reads it): every chunk
        # carries the usage so far.
        self.continuous_usage = include_usage and continuous_usage

    def body(self, choices: list[dict[str, Any]], **extra: Any) -> dict[str, Any]:
        return {**self.fields, "choices": choices, **extra}

    def event(
        self, choices: list[dict[str, Any]], progress: tuple[int, int] | None = None, **extra: Any
    ) -> bytes:
        """One SSE chunk; with include_usage every chunk has `usage` (null until the last, or with
        continuous_usage the prompt and completion tokens so far, `progress`)."""
        if self.include_usage:
            so_far = None
            if self.continuous_usage and progress is not None:
                so_far = {"prompt_tokens": progress[0], "completion_tokens": progress[1]}
                so_far["total_tokens"] = progress[0] + progress[1]
            extra = {"usage": so_far, **extra}
        data = self.body(choices, **extra)
        return format_sse_event(data_str=json.dumps(data, ensure_ascii=False))


def error_event(refusal: Refusal) -> bytes:
    """OpenAI's error object as a stream's event, as vLLM sends one mid-stream: the SDK raises `APIError`
    with its message."""
    return format_sse_event(data_str=json.dumps(refusal.openai_body(openai_api=True)))


def sse(stream: ChatStream, chunks: AsyncGenerator[bytes]) -> EventSourceResponse:
    """A `/v1` stream: `chunks` then `[DONE]`; a reply that fails after it began ends with its error event
    then `[DONE]` (`http/sse_reply.py`)."""

    async def then_done() -> AsyncGenerator[bytes]:
        async with aclosing(chunks):
            async for chunk in chunks:
                yield chunk
        yield DONE

    failed = ended_in_band(stream, then_done(), lambda refusal: [error_event(refusal), DONE])
    return EventSourceResponse(failed, headers=SSE_HEADERS)
