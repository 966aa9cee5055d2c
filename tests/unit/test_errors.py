"""One refusal, four shapes: the /ws error frame, the refused /ws handshake, the SSE error event and OpenAI's
error object, each as the contract spells it; and each refusal counted once, by outcome."""

from __future__ import annotations

import json

import pytest
from prometheus_client import REGISTRY

from qwen_chat.errors import ErrorCode, Refusal
from qwen_chat.metrics import RequestMetrics, Transport


def body(response: object) -> object:
    return json.loads(response.body)  # type: ignore[attr-defined]


def test_a_rate_limit_as_a_ws_frame_and_as_openais_error_object() -> None:
    refusal = Refusal(ErrorCode.RATE_LIMITED, "rate limit 50/minute reached", retry_after=12.5)
    assert refusal.ws_frame("m1") == {
        "type": "error",
        "id": "m1",
        "code": "rate_limited",
        "message": "rate limit 50/minute reached",
        "retry_after": 12.5,
    }
    response = refusal.openai_response(openai_api=True)
    assert response.status_code == 429 and response.headers["retry-after"] == "13"
    assert body(response) == {
        "error": {
            "message": "rate limit 50/minute reached",
            "type": "requests",
            "param": None,
            "code": "rate_limit_exceeded",
        }
    }


def test_a_ws_frame_without_retry_after_has_no_such_field() -> None:
    assert Refusal(ErrorCode.BUSY, "wait").ws_frame(None) == {
        "type": "error",
        "id": None,
        "code": "busy",
        "message": "wait",
    }


def test_a_refused_handshake_never_shows_the_openai_shape() -> None:
    unauthorized = Refusal(ErrorCode.UNAUTHORIZED, "invalid API key").handshake_response()
    assert unauthorized.status_code == 401
    assert unauthorized.headers["www-authenticate"] == 'Bearer realm="qwen-chat"'
    assert body(unauthorized) == {"error": {"code": "unauthorized", "message": "invalid API key"}}
    forbidden = Refusal(ErrorCode.FORBIDDEN, "no").handshake_response()
    assert forbidden.status_code == 403 and "www-authenticate" not in forbidden.headers
    assert body(forbidden) == {"error": {"code": "forbidden", "message": "no"}}


def test_an_http_401_is_invalid_api_key_with_a_bearer_challenge() -> None:
    response = Refusal(ErrorCode.UNAUTHORIZED, "invalid API key").openai_response(openai_api=False)
    assert response.status_code == 401 and response.headers["www-authenticate"] == 'Bearer realm="qwen-chat"'
    assert body(response)["error"]["code"] == "invalid_api_key"  # type: ignore[index]


@pytest.mark.parametrize(
    ("code", "openai_api", "status", "wire_code"),
    [
        (
            ErrorCode.BAD_REQUEST,
            True,
            400,
            "bad_request",
        ),  # OpenAI clients expect 400 for "change the request"
        (ErrorCode.BAD_REQUEST, False, 422, "bad_request"),  # the seed API answers 422
        (ErrorCode.TOO_LONG, True, 400, "context_length_exceeded"),
        (ErrorCode.TOO_LONG, False, 422, "context_length_exceeded"),
        (ErrorCode.INVALID_VALUE, True, 400, "invalid_value"),
        (ErrorCode.OVERLOADED, True, 503, "overloaded"),
        (ErrorCode.MODEL_NOT_FOUND, True, 404, "model_not_found"),
        (ErrorCode.NOT_FOUND, False, 404, "not_found"),
    ],
)
def test_openai_object_status_and_code(
    code: ErrorCode, openai_api: bool, status: int, wire_code: str
) -> None:
    response = Refusal(code, "m", param="p").openai_response(openai_api)
    assert response.status_code == status
    assert body(response) == {
        "error": {
            "message": "m",
            "type": "server_error" if status == 503 else "invalid_request_error",
            "param": "p",
            "code": wire_code,
        }
    }


def test_a_framework_error_keeps_its_status_and_headers() -> None:
    refusal = Refusal(ErrorCode.METHOD_NOT_ALLOWED, "DELETE is not allowed here", headers={"Allow": "POST"})
    response = refusal.openai_response(openai_api=True)
    assert response.status_code == 405 and response.headers["allow"] == "POST"
    teapot = Refusal(ErrorCode.HTTP_ERROR, "I'm a Teapot", status=418).openai_response(openai_api=False)
    assert teapot.status_code == 418 and body(teapot)["error"]["type"] == "server_error"  # type: ignore[index]


def test_the_sse_error_event() -> None:
    event = Refusal(ErrorCode.INTERNAL, "the model failed to generate a reply").sse_event().decode()
    assert event.startswith("event: error\n")
    data = next(line for line in event.splitlines() if line.startswith("data: "))
    assert json.loads(data.removeprefix("data: ")) == {
        "error": {"message": "the model failed to generate a reply", "code": "internal"}
    }


def _requests(outcome: str) -> float:
    labels = {"model": "unit-test", "transport": "openai", "outcome": outcome}
    return REGISTRY.get_sample_value("qwen_chat_requests_total", labels) or 0.0


def _refusals(reason: str) -> float:
    labels = {"model": "unit-test", "transport": "openai", "reason": reason}
    return REGISTRY.get_sample_value("qwen_chat_refusals_total", labels) or 0.0


def test_a_refusal_counts_under_its_outcome_and_codes_that_are_no_chat_outcome_do_not() -> None:
    before = {outcome: _requests(outcome) for outcome in ("rejected", "rate_limited")}
    reasons = ("rate_limited", "user_requests", "too_long", "overloaded", "internal")
    refused_before = {reason: _refusals(reason) for reason in reasons}
    for refusal in (
        Refusal(ErrorCode.RATE_LIMITED, "slow down", retry_after=1),
        Refusal(ErrorCode.RATE_LIMITED, "at your cap", retry_after=1, cause="user_requests"),
        Refusal(ErrorCode.TOO_LONG, "too long"),
        Refusal(ErrorCode.OVERLOADED, "full"),
        *(
            Refusal(uncounted, "not a chat outcome")
            for uncounted in (
                ErrorCode.UNAUTHORIZED,
                ErrorCode.INVALID_VALUE,
                ErrorCode.NOT_FOUND,
                ErrorCode.INTERNAL,
            )
        ),
    ):
        usage = RequestMetrics("unit-test", Transport.OPENAI)
        usage.refused(refusal)
        usage.refused(refusal)  # one request is counted once, however many times it is told
    assert _requests("rate_limited") - before["rate_limited"] == 2
    assert _requests("rejected") - before["rejected"] == 2
    counted = {reason: _refusals(reason) - refused_before[reason] for reason in reasons}
    assert counted == {"rate_limited": 1, "user_requests": 1, "too_long": 1, "overloaded": 1, "internal": 0}
