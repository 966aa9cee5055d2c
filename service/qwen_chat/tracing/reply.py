"""One chat reply's spans: `chat <model>`, and under it `queue`, `prefill` and `decode`.

The reply span starts where admission starts and ends with the reply; on HTTP it is a child of FastAPI's
server span, on /ws it is the server span of one chat message (parented to the handshake's `traceparent`).
The three phases are drawn when the reply ends, from what its `Finished` says (the engine's queue time)
and when the first token reached the transport: queue from the hand-over to the engine until decoding
started, prefill until the first token, decode until the end. Attributes follow OpenTelemetry's GenAI
conventions (`gen_ai.*`) where they have a name, vLLM's `gen_ai.latency.*` for the latencies, and
`qwen_chat.*` for the rest. The user is the key's name, never the key; the prompt only under LOG_PROMPTS.
"""

from __future__ import annotations

import asyncio
import json
import time
from collections.abc import Iterator, Sequence
from contextlib import contextmanager
from typing import TYPE_CHECKING, Any

from opentelemetry import context as otel_context
from opentelemetry import trace
from opentelemetry.trace import SpanKind, Status, StatusCode

from qwen_chat.errors import Refusal
from qwen_chat.metrics import DRAINING, ReplySpans
from qwen_chat.tracing.provider import tracer as current_tracer

if TYPE_CHECKING:
    from opentelemetry.context import Context

    from qwen_chat.sampling_params import SamplingParams

MODEL = "gen_ai.request.model"
INPUT_TOKENS = "gen_ai.usage.input_tokens"
OUTPUT_TOKENS = "gen_ai.usage.output_tokens"
FINISH_REASONS = "gen_ai.response.finish_reasons"
QUEUE_POSITION = "qwen_chat.queue_position"
USER = "user.id"


class ReplyTrace:
    """The spans of one reply; each method ends them at most once, whichever way the reply ends."""

    def __init__(self, span: trace.Span, model: str, started_ns: int) -> None:
        self.span = span
        self.context = trace.set_span_in_context(span)
        self._model = model
        self._started_ns = started_ns
        self._queue_position: int | None = None
        self._handed_ns: int | None = None  # given to the engine
        self._first_ns: int | None = None  # the first token reached the transport
        self._ended = False

    def admitted(
        self,
        request_id: str,
        queue_position: int,
        prompt_tokens: int,
        params: SamplingParams,
        messages: Sequence[Any] | None,
    ) -> None:
        """The engine took the request; `messages` only when LOG_PROMPTS is on."""
        self._handed_ns = time.time_ns()
        self._queue_position = queue_position
        attributes: dict[str, Any] = {
            "qwen_chat.request_id": request_id,  # as in the reply's log lines
            QUEUE_POSITION: queue_position,
            INPUT_TOKENS: prompt_tokens,
            "gen_ai.request.max_tokens": params.max_new_tokens,
            "gen_ai.request.temperature": params.temperature,
            "gen_ai.request.top_p": params.top_p,
            "gen_ai.request.top_k": params.top_k,
            "gen_ai.request.presence_penalty": params.presence_penalty,
            "gen_ai.request.frequency_penalty": params.frequency_penalty,
            "qwen_chat.request.min_p": params.min_p,
            "qwen_chat.request.repetition_penalty": params.repetition_penalty,
        }
        if params.seed is not None:
            attributes["gen_ai.request.seed"] = params.seed
        if messages is not None:
            attributes["gen_ai.input.messages"] = json.dumps(
                [_parts(message) for message in messages], ensure_ascii=False, default=str
            )
        self.span.set_attributes(attributes)

    def first_token(self) -> None:
        if self._first_ns is None:
            self._first_ns = time.time_ns()

    def finished(
        self, outcome: str, prompt_tokens: int, completion_tokens: int, queue_seconds: float
    ) -> None:
        """The reply ended with the engine's `Finished`: draw its three phases."""
        if self._ended:
            return
        end = time.time_ns()
        handed = self._handed_ns or end
        first = self._first_ns or end
        started = min(handed + int(queue_seconds * 1e9), first)  # decoding started
        self._phase("queue", handed, started, {QUEUE_POSITION: self._queue_position})
        self._phase("prefill", started, first, {INPUT_TOKENS: prompt_tokens})
        self._phase("decode", first, end, {OUTPUT_TOKENS: completion_tokens, FINISH_REASONS: [outcome]})
        self.span.set_attributes(
            {
                INPUT_TOKENS: prompt_tokens,
                OUTPUT_TOKENS: completion_tokens,
                FINISH_REASONS: [outcome],
                # vLLM's latencies; time to first token from arrival, as the client feels it.
                "gen_ai.latency.time_in_queue": queue_seconds,
                "gen_ai.latency.time_to_first_token": (first - self._started_ns) / 1e9,
                "gen_ai.latency.time_in_model_prefill": (first - started) / 1e9,
                "gen_ai.latency.time_in_model_decode": (end - first) / 1e9,
                "gen_ai.latency.e2e": (end - self._started_ns) / 1e9,
            }
        )
        if outcome == "timeout":  # cut at its deadline: OpenTelemetry's own example of an `error.type`
            self.span.set_attribute("error.type", "timeout")
        self._end(end)

    def ended(self, outcome: str, error_type: str = "engine_error") -> None:
        """The reply ended without a `Finished` (`cancelled`, or `error`: the engine's, or a bug's exception
        type): what is known of its phases."""
        if self._ended:
            return
        end = time.time_ns()
        if self._first_ns is not None:
            self._phase("decode", self._first_ns, end, {FINISH_REASONS: [outcome]})
        elif self._handed_ns is not None:
            self._phase("queue", self._handed_ns, end, {})
        self.span.set_attribute(FINISH_REASONS, [outcome])
        if outcome == "error":
            engine = error_type == "engine_error"
            failed = "the model failed to generate a reply" if engine else "the server failed"
            self.span.set_status(Status(StatusCode.ERROR, failed))
            self.span.set_attribute("error.type", error_type)
        self._end(end)

    def refused(self, refusal: Refusal) -> None:
        """The request was answered with `refusal` instead of a reply."""
        if self._ended:
            return
        self.span.set_attribute("error.type", refusal.cause)
        if refusal.status >= 500 and refusal.cause != DRAINING:  # a rollout refuses by design
            self.span.set_status(Status(StatusCode.ERROR, refusal.message))
        self._end(time.time_ns())

    def _phase(self, name: str, start: int, end: int, attributes: dict[str, Any]) -> None:
        tracer = current_tracer()
        if tracer is None or not self.span.is_recording():  # traces went off, or this one is not sampled
            return
        attributes = {MODEL: self._model, **{k: v for k, v in attributes.items() if v is not None}}
        span = tracer.start_span(name, context=self.context, start_time=start, attributes=attributes)
        span.end(end_time=max(start, end))

    def _end(self, end: int) -> None:
        self._ended = True
        self.span.end(end_time=end)


def start_reply(
    model: str,
    transport: str,
    user: str,
    operation: str = "chat",
    parent: Context | None = None,
    server: bool = False,
    attributes: dict[str, Any] | None = None,
) -> ReplyTrace | None:
    """The spans of a reply that begins now; None while traces are off. `parent` None: the current span's
    child (FastAPI's server span on HTTP); `server` for a span that is the transport's own (/ws)."""
    tracer = current_tracer()
    if tracer is None:
        return None
    started = time.time_ns()
    span = tracer.start_span(
        f"{operation} {model}",
        context=parent,
        start_time=started,
        kind=SpanKind.SERVER if server else SpanKind.INTERNAL,
        attributes={
            "gen_ai.operation.name": operation,
            MODEL: model,
            "gen_ai.response.model": model,
            "qwen_chat.transport": transport,
            USER: user,
            **(attributes or {}),
        },
    )
    return ReplyTrace(span, model, started)


def extract(headers: Any) -> Context | None:
    """The W3C `traceparent` (and baggage) a client sent, as a parent; None while traces are off."""
    if current_tracer() is None:
        return None
    from opentelemetry import propagate

    return propagate.extract(dict(headers))


@contextmanager
def ended_by_exception(reply: ReplySpans | None) -> Iterator[None]:
    """Whatever ends the block early ends the reply's spans: a refusal with its cause, a cancellation as
    `cancelled`, anything else as `error`."""
    try:
        yield
    except Refusal as refusal:
        if reply is not None:
            reply.refused(refusal)
        raise
    except BaseException as exc:
        if reply is not None:
            reply.ended("cancelled" if isinstance(exc, asyncio.CancelledError | GeneratorExit) else "error")
        raise


def _parts(message: Any) -> dict[str, Any]:
    """A chat turn in the GenAI conventions' message form: a role and its parts."""
    turn: dict[str, Any] = dict(message) if isinstance(message, dict) else {"content": str(message)}
    parts: list[dict[str, Any]] = []
    if turn.get("content"):
        parts.append({"type": "text", "content": turn["content"]})
    parts += [{"type": "tool_call", **call} for call in turn.get("tool_calls") or []]
    return {"role": turn.get("role", "user"), "parts": parts}


@contextmanager
def active(reply: ReplyTrace | None) -> Iterator[None]:
    """Make the reply's span current, so log lines (and tasks started here) carry its ids."""
    if reply is None:
        yield
        return
    token = otel_context.attach(reply.context)
    try:
        yield
    finally:
        otel_context.detach(token)
