"""One admitted chat reply, as the transports read it: text deltas (a reasoning model's thinking first, as
`ReasoningDelta`s), then one `Finished`."""

from __future__ import annotations

import asyncio
import dataclasses
from collections.abc import AsyncIterator, Callable
from dataclasses import dataclass, field

from qwen_chat.chat.reasoning import ReasoningDelta, ReasoningSplit
from qwen_chat.chat.stop_strings import StopStrings
from qwen_chat.engine.interface import (
    Engine,
    EngineError,
    Finished,
    GenerationEvent,
    GenerationRequest,
    TextDelta,
)
from qwen_chat.engine.prompts import Message
from qwen_chat.metrics import RequestMetrics


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
    closed: asyncio.Event = field(default_factory=asyncio.Event)
    on_close: Callable[[ChatStream], None] | None = None

    async def events(self) -> AsyncIterator[ReasoningDelta | TextDelta | Finished]:
        """Text deltas, then `Finished`; metrics are recorded as each is handed on (that is, sent)."""
        try:
            async for event in self._events:
                if isinstance(event, TextDelta) and not self.stops.stopped:
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
                    if self.stops.stopped:
                        event = dataclasses.replace(event, reason="stop")
                    yield event
                    self.usage.finished(
                        event.reason,
                        event.prompt_tokens,
                        event.completion_tokens,
                        event.queue_seconds,
                        tokens_per_second(event),
                    )
                    return
        except EngineError:
            self.usage.ended("error")
            raise
        except (asyncio.CancelledError, GeneratorExit):
            self.usage.ended("cancelled")
            raise
        finally:
            await self.aclose()

    def _split(self, text: str, completion: int, end: bool = False) -> list[ReasoningDelta | TextDelta]:
        if self.reasoning is None:
            return [TextDelta(text, completion)] if text else []
        parts = self.reasoning.feed(text) if text else []
        if end:
            parts += self.reasoning.flush()
        return [
            ReasoningDelta(part, completion) if kind == "reasoning" else TextDelta(part, completion)
            for kind, part in parts
        ]

    async def collect(self) -> tuple[str, str | None, Finished]:
        """The whole answer, the reasoning (None for a model that does not think first) and how the reply
        ended, for APIs that answer at once. It reads `events` to their end: a consumer that stopped at
        `Finished` would close the stream before its metrics are recorded."""
        parts: list[str] = []
        thoughts: list[str] = []
        finished: Finished | None = None
        async for event in self.events():  # which close the stream however they end
            if isinstance(event, Finished):
                finished = event
            elif isinstance(event, ReasoningDelta):
                thoughts.append(event.text)
            else:
                parts.append(event.text)
        assert finished is not None, "the engine ended without finishing"
        return "".join(parts), "".join(thoughts) if self.reasoning is not None else None, finished

    def cancel(self) -> None:
        """End the reply early: it finishes with reason `cancelled`."""
        self.engine.abort(self.request.request_id)

    async def aclose(self) -> None:
        """Stop the generation if it still runs; transports call this when they are done, however they end."""
        await self._events.aclose()  # type: ignore[attr-defined]
        if not self.closed.is_set():
            self.closed.set()
            if self.on_close is not None:
                self.on_close(self)


def tokens_per_second(event: Finished) -> float:
    return event.completion_tokens / event.generation_seconds if event.generation_seconds else 0.0
