"""The exception handlers that answer every HTTP error with OpenAI's error object, `{"error": {"message",
"type", "param", "code"}}`, on every path, so clients parse one shape (the vocabulary is in
`qwen_chat.errors`). Refusals that can be retried carry `Retry-After`. Chat refusals are counted here, once,
as they are answered."""

from __future__ import annotations

from http import HTTPStatus

from fastapi import Request
from fastapi.exceptions import RequestValidationError
from fastapi.responses import JSONResponse
from pydantic import ValidationError
from starlette.exceptions import HTTPException

from qwen_chat.engine.api.interface import EngineError
from qwen_chat.errors import ErrorCode, Refusal, describe_errors, field_path
from qwen_chat.metrics import RequestMetrics, Transport
from qwen_chat.service import get_service

# For OpenAPI: these endpoints answer with Server-Sent Events.
SSE_RESPONSE: dict[int | str, dict[str, object]] = {200: {"content": {"text/event-stream": {}}}}

_HTTP_ERROR_CODES = {400: ErrorCode.INVALID_BODY, 404: ErrorCode.NOT_FOUND, 405: ErrorCode.METHOD_NOT_ALLOWED}


# vLLM's own endpoints beside /v1: their clients expect OpenAI's error shape and status too.
_VLLM_PATHS = frozenset({"/tokenize", "/detokenize"})


def _transport(path: str) -> Transport:
    if path.startswith("/v1/") or path in _VLLM_PATHS:
        return Transport.OPENAI
    return Transport.SSE if path == "/chat_stream" else Transport.HTTP


def _openai_api(request: Request) -> bool:
    """OpenAI clients expect 400 for a request they must change; the other APIs answer 422."""
    return _transport(request.url.path) is Transport.OPENAI


async def on_refusal(request: Request, exc: Exception) -> JSONResponse:
    assert isinstance(exc, Refusal)
    model = get_service(request).settings.model_name
    RequestMetrics(model, _transport(request.url.path)).refused(exc)
    return exc.openai_response(_openai_api(request))


async def on_engine_error(request: Request, exc: Exception) -> JSONResponse:
    """A whole-reply request (`/chat`, `/v1/...` without `stream`) whose generation failed: a 500 in
    OpenAI's shape, saying nothing of the engine's own message. Its reply counted as `error` as it ended."""
    assert isinstance(exc, EngineError)
    refusal = Refusal(ErrorCode.INTERNAL, "the model failed to generate a reply")
    return refusal.openai_response(_openai_api(request))


async def on_validation_error(request: Request, exc: Exception) -> JSONResponse:
    """422 naming the field; OpenAI's 400 under /v1, where clients expect it."""
    assert isinstance(exc, RequestValidationError | ValidationError)
    errors = list(exc.errors())
    if any(error.get("type") == "json_invalid" for error in errors):
        refusal = Refusal(ErrorCode.INVALID_JSON, "the request body is not valid JSON")
    else:
        param = (field_path(errors[0]) or None) if errors else None
        refusal = Refusal(ErrorCode.INVALID_VALUE, describe_errors(errors), param=param)
    return refusal.openai_response(_openai_api(request))


async def on_http_error(request: Request, exc: Exception) -> JSONResponse:
    """Errors raised by the framework itself (no such path, a wrong method, a body it cannot parse at all,
    such as a 5,000-digit integer) in the same shape as ours, with their headers (`Allow` for a 405)."""
    assert isinstance(exc, HTTPException)
    status = exc.status_code
    # The path is not echoed: a key pasted into a URL must not come back in an error message.
    if status == 404:
        message = "no such endpoint; the API is described at /openapi.json"
    elif status == 405:
        allowed = (exc.headers or {}).get("Allow", "")
        message = f"{request.method} is not allowed here" + (f"; use {allowed}" if allowed else "")
    else:
        message = exc.detail if isinstance(exc.detail, str) and exc.detail else HTTPStatus(status).phrase
    code = _HTTP_ERROR_CODES.get(status, ErrorCode.HTTP_ERROR)
    refusal = Refusal(code, message, status=status, headers=dict(exc.headers or {}))
    return refusal.openai_response(openai_api=False)
