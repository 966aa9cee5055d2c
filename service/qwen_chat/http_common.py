"""What the HTTP routers share: the bearer-key dependency and one error shape for every HTTP error.

Errors use OpenAI's error object, `{"error": {"message", "type", "param", "code"}}`, on every path, so
clients parse one shape; refusals that can be retried carry `Retry-After`.
"""

from __future__ import annotations

import math
from http import HTTPStatus
from typing import Annotated, Any

from fastapi import Depends, Request
from fastapi.exceptions import RequestValidationError
from fastapi.responses import JSONResponse
from pydantic import ValidationError
from starlette.exceptions import HTTPException

from qwen_chat.auth import AuthError, Principal, authenticate
from qwen_chat.chat_service import ChatRefused
from qwen_chat.metrics import AUTH_FAILURES, RequestMetrics
from qwen_chat.ws_protocol import describe_errors, field_path

_TYPES = {
    400: "invalid_request_error",
    401: "invalid_request_error",
    404: "invalid_request_error",
    405: "invalid_request_error",
    409: "invalid_request_error",
    422: "invalid_request_error",
    429: "requests",
    503: "server_error",
}


# For OpenAPI: these endpoints answer with Server-Sent Events.
SSE_RESPONSE: dict[int | str, dict[str, Any]] = {200: {"content": {"text/event-stream": {}}}}


class HTTPAuthError(Exception):
    def __init__(self, status: int, message: str) -> None:
        self.status = status
        self.message = message


def error_response(
    status: int, message: str, code: str, param: str | None = None, retry_after: float | None = None
) -> JSONResponse:
    body = {
        "error": {
            "message": message,
            "type": _TYPES.get(status, "server_error"),
            "param": param,
            "code": code,
        }
    }
    headers = {"Retry-After": str(math.ceil(retry_after))} if retry_after is not None else None
    return JSONResponse(body, status_code=status, headers=headers)


def http_principal(request: Request) -> Principal:
    """Dependency: the caller's identity from `Authorization: Bearer <key>`; 401 otherwise."""
    try:
        return authenticate(request.app.state.credentials, request.headers, request.query_params)
    except AuthError as exc:
        AUTH_FAILURES.labels("http", "key").inc()
        raise HTTPAuthError(exc.status, exc.message) from None


PrincipalDep = Annotated[Principal, Depends(http_principal)]

_HTTP_ERROR_CODES = {400: "invalid_body", 404: "not_found", 405: "method_not_allowed"}

_REFUSAL_CODES = {"rate_limited": "rate_limit_exceeded", "too_long": "context_length_exceeded"}


async def on_auth_error(_request: Request, exc: Exception) -> JSONResponse:
    assert isinstance(exc, HTTPAuthError)
    response = error_response(exc.status, exc.message, "invalid_api_key")
    response.headers["WWW-Authenticate"] = 'Bearer realm="qwen-chat"'
    return response


def _bad_request_status(request: Request) -> int:
    """OpenAI clients expect 400 for a request they must change; the other APIs answer 422."""
    return 400 if request.url.path.startswith("/v1/") else 422


def _transport(path: str) -> str:
    if path.startswith("/v1/"):
        return "openai"
    return "sse" if path == "/chat_stream" else "http"


async def on_chat_refused(request: Request, exc: Exception) -> JSONResponse:
    assert isinstance(exc, ChatRefused)
    # Refusals raised before admission (a token budget past the cap, n != 1) count here.
    exc.record(RequestMetrics(request.app.state.settings.model_name, _transport(request.url.path)))
    code = _REFUSAL_CODES.get(exc.code, exc.code)
    status = _bad_request_status(request) if exc.status == 422 else exc.status
    return error_response(status, exc.message, code, exc.param, exc.retry_after)


async def on_validation_error(request: Request, exc: Exception) -> JSONResponse:
    """422 naming the field; OpenAI's 400 under /v1, where clients expect it."""
    assert isinstance(exc, RequestValidationError | ValidationError)
    errors = list(exc.errors())
    status = _bad_request_status(request)
    if any(error.get("type") == "json_invalid" for error in errors):
        return error_response(status, "the request body is not valid JSON", "invalid_json")
    param = (field_path(errors[0]) or None) if errors else None
    return error_response(status, describe_errors(errors), "invalid_value", param)


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
    response = error_response(status, message, _HTTP_ERROR_CODES.get(status, "http_error"))
    response.headers.update(exc.headers or {})
    return response
