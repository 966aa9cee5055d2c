"""One admitted chat reply, as the transports read it: text deltas, then one `Finished`."""

from __future__ import annotations

import asyncio
import dataclasses
from collections.abc import AsyncIterator, Callable
from dataclasses import dataclass, field

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
    closed: asyncio.Event = field(default_factory=asyncio.Event)
    on_close: Callable[[ChatStream], None] | None = None

    async def events(self) -> AsyncIterator[TextDelta | Finished]:
        """Text deltas, then `Finished`; metrics are recorded as each is handed on (that is, sent)."""
        completion = 0
        try:
            async for event in self._events:
                if isinstance(event, TextDelta) and not self.stops.stopped:
                    completion = event.completion_tokens
                    text = self.stops.feed(event.text)
                    if self.stops.stopped:
                        self.engine.abort(self.request.request_id)
                    if text:
                        yield TextDelta(text, completion)
                        self.usage.tokens_sent(completion)
                elif isinstance(event, Finished):
                    tail = self.stops.flush() if not self.stops.stopped else ""
                    if tail:
                        yield TextDelta(tail, event.completion_tokens)
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

    async def collect(self) -> tuple[str, Finished]:
        """The whole reply and how it ended, for APIs that answer at once. It reads `events` to their end:
        a consumer that stopped at `Finished` would close the stream before its metrics are recorded."""
        parts: list[str] = []
        finished: Finished | None = None
        async for event in self.events():  # which close the stream however they end
            if isinstance(event, Finished):
                finished = event
            else:
                parts.append(event.text)
        assert finished is not None, "the engine ended without finishing"
        return "".join(parts), finished

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
