"""One admitted chat reply, as the transports read it: text deltas (a reasoning model's thinking first, as
`ReasoningDelta`s; tool calls as `ToolCallDelta`s when the request gave tools), then one `Finished`.

The engine's text passes, in order: the client's stop strings, the reasoning split, the tool-call parser.
Log-probabilities, when asked for, gather in `logprobs` as their tokens arrive (`take_logprobs`).

A reply can end three ways besides its `Finished`: its client goes away (`cancelled`), the server cuts it
short (`cancel(why)`: a drain's timeout; it finishes `cancelled` and `cut_by` says why; at its deadline,
`expire_after`, it finishes `timeout`), or it fails (the engine dies, or a bug of ours): `failure` counts it,
logs it and says what its client may be told.
"""

from __future__ import annotations

import asyncio
import dataclasses
import time
from collections.abc import AsyncIterator, Callable
from dataclasses import dataclass, field
from typing import Any

import structlog

from qwen_chat.chat.deadline import timed_out
from qwen_chat.chat.reasoning import ReasoningDelta, ReasoningSplit
from qwen_chat.chat.stop_strings import StopStrings
from qwen_chat.chat.tool_calls import ToolCall, ToolCallDelta, ToolCallParser
from qwen_chat.engine.api.interface import (
    Engine,
    EngineError,
    Finished,
    GenerationEvent,
    GenerationRequest,
    TextDelta,
)
from qwen_chat.engine.model.prompts import Message
from qwen_chat.engine.wire import TokenLogprob
from qwen_chat.errors import ErrorCode, Refusal
from qwen_chat.metrics import RequestMetrics

Delta = ReasoningDelta | TextDelta | ToolCallDelta
log = structlog.get_logger(__name__)

# What a client whose reply failed is told: never the engine's own message, a path or a traceback.
ENGINE_FAILED = "the model failed to generate a reply"
SERVER_FAILED = "the server failed while sending the reply"


@dataclass(frozen=True)
class Reply:
    text: str  # the answer
    reasoning: str | None  # None for a model that does not think first
    tool_calls: list[ToolCall]
    finished: Finished


@dataclass(eq=False)
class ChatStream:
    """An admitted request: its place in the queue, and its reply as text deltas and one `Finished`."""

    engine: Engine
    request: GenerationRequest
    messages: list[Message]  # what was kept of the conversation after dropping old turns
    queue_position: int
    usage: RequestMetrics
    stops: StopStrings
    _events: AsyncIterator[GenerationEvent]
    reasoning: ReasoningSplit | None = None  # set for a model that thinks first (chat/reasoning.py)
    tools: ToolCallParser | None = None  # set when the request gave tools (chat/tool_calls.py)
    logprobs: list[tuple[int, TokenLogprob]] = field(default_factory=list)
    _logprobs_taken: int = 0
    closed: asyncio.Event = field(default_factory=asyncio.Event)
    on_close: Callable[[ChatStream], None] | None = None
    cut_by: Refusal | None = None  # why the server cut the reply short (`cancel(why)`)
    _calls: list[ToolCall] = field(default_factory=list)
    _deadline: asyncio.TimerHandle | None = None  # `expire_after`'s timer, until the stream closes
    _cancelled: bool = False  # `cancel` was called (by the client, a drain or the deadline)

    def take_logprobs(self) -> list[tuple[int, TokenLogprob]]:
        """The tokens' log-probabilities that arrived since the last call."""
        taken = self.logprobs[self._logprobs_taken :]
        self._logprobs_taken = len(self.logprobs)
        return taken

    async def events(self) -> AsyncIterator[Delta | Finished]:
        """Text deltas, then `Finished`; metrics are recorded as each is handed on (that is, sent)."""
        try:
            async for event in self._events:
                if isinstance(event, TextDelta) and not self.stops.stopped:
                    self.logprobs += event.logprobs
                    text = self.stops.feed(event.text)
                    if self.stops.stopped:
                        self.engine.abort(self.request.request_id)
                    for delta in self._split(text, event.completion_tokens):
                        yield delta
                        self.usage.tokens_sent(event.completion_tokens)
                elif isinstance(event, Finished):
                    tail = self.stops.flush() if not self.stops.stopped else ""
                    for delta in self._split(tail, event.completion_tokens, end=True):
                        yield delta
                        self.usage.tokens_sent(event.completion_tokens)
                    if self.stops.stopped or (self.tools is not None and self.tools.done):
                        event = dataclasses.replace(event, reason="stop")
                    elif event.reason == "cancelled" and self.timed_out:
                        event = dataclasses.replace(event, reason="timeout")
                    yield event
                    self.usage.finished(
                        event.reason,
                        event.prompt_tokens,
                        event.completion_tokens,
                        event.queue_seconds,
                        tokens_per_second(event),
                    )
                    return
        except Exception as exc:  # the engine or our own code failed: counted before `finally` says cancelled
            self.usage.ended("error", error_type(exc))
            raise
        except (asyncio.CancelledError, GeneratorExit):
            self.usage.ended("cancelled")
            raise
        finally:
            await self.aclose()

    def _split(self, text: str, completion: int, end: bool = False) -> list[Delta]:
        if self.reasoning is None:
            deltas: list[Delta] = [TextDelta(text, completion)] if text else []
        else:
            parts = self.reasoning.feed(text) if text else []
            if end:
                parts += self.reasoning.flush()
            deltas = [
                ReasoningDelta(part, completion) if kind == "reasoning" else TextDelta(part, completion)
                for kind, part in parts
            ]
        return self._find_calls(deltas, completion, end) if self.tools is not None else deltas

    def _find_calls(self, deltas: list[Delta], completion: int, end: bool) -> list[Delta]:
        assert self.tools is not None
        out: list[Delta] = []
        pieces: list[str | ToolCall] = []
        for delta in deltas:
            if isinstance(delta, TextDelta):
                pieces += self.tools.feed(delta.text)
            else:
                out.append(delta)
        if end:
            pieces += self.tools.flush()
        for piece in pieces:
            if isinstance(piece, ToolCall):
                out.append(ToolCallDelta(piece, len(self._calls), completion))
                self._calls.append(piece)
                if self.tools.done and not end:  # the one call it may make is made: stop generating
                    self.engine.abort(self.request.request_id)
            else:
                out.append(TextDelta(piece, completion))
        return out

    async def collect(self) -> Reply:
        """The whole reply, for APIs that answer at once. It reads `events` to their end: a consumer that
        stopped at `Finished` would close the stream before its metrics are recorded."""
        parts: list[str] = []
        thoughts: list[str] = []
        calls: list[ToolCall] = []
        finished: Finished | None = None
        try:
            async for event in self.events():  # which close the stream however they end
                if isinstance(event, Finished):
                    finished = event
                elif isinstance(event, ReasoningDelta):
                    thoughts.append(event.text)
                elif isinstance(event, ToolCallDelta):
                    calls.append(event.call)
                else:
                    parts.append(event.text)
        except EngineError as exc:  # logged as a streamed reply's failure is; answered by the HTTP handler
            self.failure(exc)
            raise
        assert finished is not None, "the engine ended without finishing"
        reasoning = "".join(thoughts) if self.reasoning is not None else None
        return Reply("".join(parts), reasoning, calls, finished)

    def cancel(self, why: Refusal | None = None) -> None:
        """End the reply early: it finishes with reason `cancelled`. `why`, when the server (not the client)
        cuts it short, is what a transport with no word for `cancelled` tells its client instead. The first
        cancel says why: a deadline passing after the client cancelled does not make it a timeout."""
        if self._cancelled:
            return
        self._cancelled = True
        self.cut_by = why
        self.engine.abort(self.request.request_id)

    def expire_after(self, seconds: float) -> None:
        """Cut the reply short once `seconds` have passed since its request was received (the queue's wait
        counts): it finishes `timeout`, its slot freed; the timer goes when the stream closes first."""
        left = seconds - (time.perf_counter() - self.usage.received)
        loop = asyncio.get_running_loop()
        self._deadline = loop.call_later(max(left, 0.0), self.cancel, timed_out(seconds))

    @property
    def timed_out(self) -> bool:
        """Whether its deadline cut the reply short (it may still have finished first)."""
        return self.cut_by is not None and self.cut_by.code is ErrorCode.TIMEOUT

    def failure(self, exc: Exception, bound: Any = None, **fields: Any) -> Refusal:
        """A reply that `exc` ended after it began: counted once as `error` (its span ended with it), logged
        on `bound` (a logger with the transport's context) with a traceback when it is a bug of ours, and
        the refusal its client is shown, which names nothing internal."""
        self.usage.ended("error", error_type(exc))
        logger = bound if bound is not None else log.bind(transport=self.usage.transport.value)
        fields = {"request_id": self.request.request_id, "outcome": "error", **fields}
        if isinstance(exc, EngineError):
            cause = f" ({exc.__cause__})" if exc.__cause__ is not None else ""
            logger.error("chat_failed", error=f"{exc}{cause}", **fields)
            return Refusal(ErrorCode.INTERNAL, ENGINE_FAILED)
        logger.error("chat_failed", exc_info=exc, **fields)
        return Refusal(ErrorCode.INTERNAL, SERVER_FAILED)

    async def aclose(self) -> None:
        """Stop the generation if it still runs; transports call this when they are done, however they end.
        A reply closed before `events` saw it end (its client went away before the first frame) counts as
        cancelled."""
        if self._deadline is not None:
            self._deadline.cancel()
        await self._events.aclose()  # type: ignore[attr-defined]
        self.usage.ended("cancelled")  # no-op when it was counted already
        if not self.closed.is_set():
            self.closed.set()
            if self.on_close is not None:
                self.on_close(self)


def error_type(exc: Exception) -> str:
    """A failed reply's `error.type` on its span: the engine's failure, or the type of a bug's exception."""
    return "engine_error" if isinstance(exc, EngineError) else type(exc).__qualname__


def tokens_per_second(event: Finished) -> float:
    return event.completion_tokens / event.generation_seconds if event.generation_seconds else 0.0
