"""A chat request's deadline: the operator's bound (QWEN_CHAT_REQUEST_TIMEOUT) and the request's own
(`X-Request-Timeout` on HTTP, `params.timeout` on /ws), the smaller of the two; and the refusal that says a
reply was cut at it. The clock starts when the request is received, so time spent waiting in the queue
counts; `ChatStream.expire_after` arms it."""

from __future__ import annotations

from qwen_chat.errors import ErrorCode, Refusal

# Told to the `openai` SDK on a whole-reply 504: it retries 5xx by default, and a request that did not finish
# in time would most likely not finish in time again, while it doubles the load that made it wait.
NO_RETRY = {"x-should-retry": "false"}


def effective_timeout(server: float | None, requested: float | None) -> float | None:
    """The bound a request runs under: a request may shorten the operator's, never lengthen it; None: none."""
    bounds = [bound for bound in (server, requested) if bound is not None]
    return min(bounds) if bounds else None


def timed_out(seconds: float) -> Refusal:
    """Why a reply was cut short at its deadline: what a transport with no `timeout` finish reason shows."""
    message = f"the reply did not finish within its deadline of {seconds:g} s"
    return Refusal(ErrorCode.TIMEOUT, message, headers=dict(NO_RETRY))
