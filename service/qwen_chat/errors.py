"""The one error vocabulary: every refusal the service answers is an `ErrorCode` in a `Refusal`.

Each transport renders the same refusal in its own shape, and the shapes are part of the contract:
- a /ws `error` frame, `{"type": "error", "id", "code", "message", "retry_after"?}`;
- a /ws handshake refused before the upgrade, `{"error": {"code", "message"}}` with 401, 403 or 503;
- an SSE `error` event, `{"error": {"message", "code"}}`;
- OpenAI's error object on every HTTP path, `{"error": {"message", "type", "param", "code"}}`.
A code may be spelled differently on /ws and in OpenAI's object (`rate_limited` / `rate_limit_exceeded`);
`_RENDERINGS` says how, in one table.
"""

from __future__ import annotations

import enum
import json
import math
from collections.abc import Collection, Sequence
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from starlette.responses import JSONResponse


class ErrorCode(enum.StrEnum):
    BAD_REQUEST = "bad_request"
    INVALID_VALUE = "invalid_value"
    INVALID_JSON = "invalid_json"
    INVALID_BODY = "invalid_body"
    TOO_LONG = "too_long"
    BUSY = "busy"
    RATE_LIMITED = "rate_limited"
    OVERLOADED = "overloaded"
    MODEL_NOT_FOUND = "model_not_found"
    INTERNAL = "internal"
    UNAUTHORIZED = "unauthorized"
    FORBIDDEN = "forbidden"
    NOT_FOUND = "not_found"
    METHOD_NOT_ALLOWED = "method_not_allowed"
    HTTP_ERROR = "http_error"
    TIMEOUT = "timeout"  # a reply cut at its deadline (QWEN_CHAT_REQUEST_TIMEOUT, or the request's own)

    @property
    def ws(self) -> str:
        """The code in a /ws `error` frame or a refused handshake."""
        return _RENDERINGS[self].ws or self.value

    @property
    def openai(self) -> str:
        """The `code` of OpenAI's error object."""
        return _RENDERINGS[self].openai or self.value

    @property
    def status(self) -> int:
        return _RENDERINGS[self].status

    @property
    def outcome(self) -> str | None:
        """The `requests_total` outcome of a chat request refused so (`timeout`: of a reply cut at its
        deadline, counted as it ends); None for refusals that are not a chat request's answer (a bad key is
        counted in auth_failures_total, a malformed body nowhere)."""
        return _RENDERINGS[self].outcome


@dataclass(frozen=True)
class _Rendering:
    status: int
    outcome: str | None = None
    ws: str | None = None  # None: the code's own value
    openai: str | None = None


_REJECTED = "rejected"
# 422 is "change the request": the seed API answers it as is; OpenAI's clients expect 400 instead
# (`Refusal.status_for`).
_RENDERINGS = {
    ErrorCode.BAD_REQUEST: _Rendering(422, _REJECTED),
    ErrorCode.INVALID_VALUE: _Rendering(422),
    ErrorCode.INVALID_JSON: _Rendering(422),
    ErrorCode.INVALID_BODY: _Rendering(400),
    ErrorCode.TOO_LONG: _Rendering(422, _REJECTED, openai="context_length_exceeded"),
    ErrorCode.BUSY: _Rendering(409, _REJECTED),
    ErrorCode.RATE_LIMITED: _Rendering(429, "rate_limited", openai="rate_limit_exceeded"),
    ErrorCode.OVERLOADED: _Rendering(503, _REJECTED),
    ErrorCode.MODEL_NOT_FOUND: _Rendering(404, _REJECTED),
    ErrorCode.INTERNAL: _Rendering(500),
    ErrorCode.UNAUTHORIZED: _Rendering(401, openai="invalid_api_key"),
    ErrorCode.FORBIDDEN: _Rendering(403),
    ErrorCode.NOT_FOUND: _Rendering(404),
    ErrorCode.METHOD_NOT_ALLOWED: _Rendering(405),
    ErrorCode.HTTP_ERROR: _Rendering(500),
    # 504, not 408: the request was whole and valid, the server did not finish it in time (408 says the
    # client was too slow sending it). It is Google's mapping of gRPC's DEADLINE_EXCEEDED, and what Envoy
    # answers when a route's timeout passes. Only a `/v1` request without `stream` sees the status; a streamed
    # reply ends with the error event, `/ws` and the seed API with `finish_reason: "timeout"`.
    ErrorCode.TIMEOUT: _Rendering(504, "timeout"),
}

# OpenAI's error `type` by HTTP status.
_OPENAI_TYPES = {
    400: "invalid_request_error",
    401: "invalid_request_error",
    404: "invalid_request_error",
    405: "invalid_request_error",
    409: "invalid_request_error",
    422: "invalid_request_error",
    429: "requests",
    503: "server_error",
}

_BEARER_CHALLENGE = {"WWW-Authenticate": 'Bearer realm="qwen-chat"'}


class Refusal(Exception):
    """The service will not (or cannot) do what was asked. The message is safe to show the client: it never
    holds a key or echoes a large input. `status` overrides the code's own (a framework error's status);
    `cause` names why, where one code has several (`rate_limited`: the rate limit, or the user's cap)."""

    def __init__(
        self,
        code: ErrorCode,
        message: str,
        *,
        retry_after: float | None = None,
        param: str | None = None,
        status: int | None = None,
        headers: dict[str, str] | None = None,
        cause: str | None = None,
    ) -> None:
        super().__init__(message)
        self.code = code
        # The `reason` of refusals_total when the code alone does not say it (a cap, not the rate limit).
        self.cause = cause or code.value
        self.message = message
        self.retry_after = retry_after
        self.param = param
        self.status = status or code.status
        self.headers = headers or {}

    def status_for(self, openai_api: bool) -> int:
        return 400 if openai_api and self.status == 422 else self.status

    def ws_frame(self, message_id: str | None) -> dict[str, Any]:
        frame: dict[str, Any] = {
            "type": "error",
            "id": message_id,
            "code": self.code.ws,
            "message": self.message,
        }
        if self.retry_after is not None:
            frame["retry_after"] = self.retry_after
        return frame

    def handshake_response(self) -> JSONResponse:
        """A /ws handshake refused before the upgrade."""
        # Imported here: settings import this module (for the refusal type) and need no web framework.
        from starlette.responses import JSONResponse

        headers = dict(_BEARER_CHALLENGE) if self.status == 401 else {}
        headers.update(self._retry_after())
        body = {"error": {"code": self.code.ws, "message": self.message}}
        return JSONResponse(body, status_code=self.status, headers=headers)

    def openai_response(self, openai_api: bool) -> JSONResponse:
        """OpenAI's error object, used on every HTTP path; `openai_api` under /v1 (400 for 422)."""
        from starlette.responses import JSONResponse

        status = self.status_for(openai_api)
        response = JSONResponse(self.openai_body(openai_api), status_code=status, headers=self._retry_after())
        if status == 401:
            response.headers.update(_BEARER_CHALLENGE)
        response.headers.update(self.headers)
        return response

    def openai_body(self, openai_api: bool) -> dict[str, Any]:
        """OpenAI's error object: a response's body, or the event that ends a `/v1` stream that has begun."""
        status = self.status_for(openai_api)
        error = {"message": self.message, "type": _OPENAI_TYPES.get(status, "server_error")}
        return {"error": {**error, "param": self.param, "code": self.code.openai}}

    def sse_event(self) -> bytes:
        """The `error` event that ends a Server-Sent Events stream that has already begun."""
        from fastapi.sse import format_sse_event

        body = {"error": {"message": self.message, "code": self.code.ws}}
        return format_sse_event(data_str=json.dumps(body), event="error")

    def _retry_after(self) -> dict[str, str]:
        return {"Retry-After": str(math.ceil(self.retry_after))} if self.retry_after is not None else {}


# What a pydantic error location holds that is not a field the client named: FastAPI's `body`.
NOT_FIELDS = frozenset({"body"})


def describe_errors(errors: Sequence[Any], not_fields: Collection[str] = NOT_FIELDS, limit: int = 3) -> str:
    """Name each offending field of a pydantic error with pydantic's message, never echoing the (possibly
    huge) input."""
    parts = []
    for error in errors[:limit]:
        location = field_path(error, not_fields)
        message = str(error.get("msg", "invalid")).removeprefix("Value error, ")
        parts.append(f"{location}: {message}" if location else message)
    return "; ".join(parts)


def field_path(error: Any, not_fields: Collection[str] = NOT_FIELDS) -> str:
    """`params.temperature` for a pydantic error, leaving out the parts of its location in `not_fields`; a
    tagged union whose tag is wrong or missing (a message's `role`) names the tag field."""
    parts = [str(part) for part in error.get("loc", ()) if part not in not_fields]
    if error.get("type") in ("union_tag_invalid", "union_tag_not_found"):
        parts.append(str((error.get("ctx") or {}).get("discriminator", "")).strip("'"))
    return ".".join(part for part in parts if part)
