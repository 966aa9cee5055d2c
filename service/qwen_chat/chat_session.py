"""One /ws connection's chat: its conversation, its one generation at a time, and the frames it sends."""

from __future__ import annotations

import asyncio
import uuid
from collections.abc import Awaitable, Callable
from typing import Any

import structlog

from qwen_chat import ws_protocol as wire
from qwen_chat.engine import (
    Engine,
    EngineError,
    EngineNotReady,
    EngineOverloaded,
    Finished,
    GenerationRequest,
    Queued,
    SamplingParams,
    TextDelta,
)
from qwen_chat.metrics import CLIENT_DISCONNECTS, RequestMetrics
from qwen_chat.prompts import Message, PromptTooLong
from qwen_chat.settings import Settings

Send = Callable[[dict[str, Any]], Awaitable[None]]
log = structlog.get_logger(__name__)

TRANSPORT = "ws"
DRAIN_RETRY_AFTER = 5.0


def sampling_params(params: wire.ChatParams, settings: Settings) -> SamplingParams:
    """Request parameters over the configured defaults; raises ValueError past the server's cap."""
    if params.max_new_tokens is not None and params.max_new_tokens > settings.max_new_tokens:
        raise ValueError(f"params.max_new_tokens: must be at most {settings.max_new_tokens}")
    return SamplingParams(
        max_new_tokens=params.max_new_tokens or settings.max_new_tokens,
        temperature=settings.temperature if params.temperature is None else params.temperature,
        top_p=params.top_p or settings.top_p,
        repetition_penalty=params.repetition_penalty or settings.repetition_penalty,
        seed=params.seed,
    )


class ChatSession:
    def __init__(
        self,
        engine: Engine,
        settings: Settings,
        send: Send,
        log_context: dict[str, Any],
        draining: Callable[[], bool] = lambda: False,
    ) -> None:
        self._engine = engine
        self._settings = settings
        self._send = send
        self._draining = draining
        self._log = log.bind(**log_context)
        self.history: list[Message] = []
        self._task: asyncio.Task[None] | None = None
        self._request_id: str | None = None
        self._epoch = 0  # bumped by reset, so a reply that ends after a reset is not added to the new chat

    @property
    def reply(self) -> asyncio.Task[None] | None:
        """The reply streaming now, if any."""
        return self._task if self._task is not None and not self._task.done() else None

    @property
    def generating(self) -> bool:
        return self.reply is not None

    async def handle_text(self, text: str) -> None:
        usage = RequestMetrics(self._settings.model_name, TRANSPORT)
        try:
            message = wire.parse_frame(text)
        except wire.ProtocolError as exc:
            await self._refuse(usage, exc.message_id, "bad_request", str(exc))
            return
        if isinstance(message, wire.Cancel):
            self.cancel()
        elif isinstance(message, wire.Reset):
            self.cancel()
            self.history = []
            self._epoch += 1
        else:
            await self._chat(message, usage)

    def cancel(self) -> None:
        if self.generating and self._request_id is not None:
            self._engine.abort(self._request_id)

    async def close(self) -> None:
        """The client is gone: stop the generation (freeing its slot) and wait for it to end."""
        if self._task is not None:
            if not self._task.done():
                CLIENT_DISCONNECTS.labels(TRANSPORT).inc()
            self._task.cancel()
            await asyncio.gather(self._task, return_exceptions=True)

    async def _refuse(
        self,
        usage: RequestMetrics,
        mid: str | None,
        code: wire.ErrorCode,
        message: str,
        retry: float | None = None,
    ) -> None:
        usage.ended("rejected")
        self._log.info("chat_rejected", id=mid, outcome="rejected", code=code)
        await self._send(wire.error(mid, code, message, retry))

    async def _chat(self, message: wire.ChatRequest, usage: RequestMetrics) -> None:
        mid = message.id
        if self._draining():
            await self._refuse(usage, mid, "overloaded", "the server is shutting down", DRAIN_RETRY_AFTER)
            return
        if self.generating:
            await self._refuse(usage, mid, "busy", "a reply is still streaming: wait for it or cancel it")
            return
        try:
            params = sampling_params(message.params, self._settings)
        except ValueError as exc:
            await self._refuse(usage, mid, "bad_request", str(exc))
            return
        stateful = message.content is not None
        if stateful:
            messages = [*self.history, {"role": "user", "content": message.content or ""}]
        else:
            messages = [m.model_dump() for m in message.messages or []]
        try:
            # Tokenising a long conversation takes milliseconds: keep it off the event loop.
            kept, prompt_ids = await asyncio.to_thread(self._engine.prompts.fit, messages)
        except EngineNotReady as exc:
            await self._refuse(usage, mid, "overloaded", str(exc), exc.retry_after)
            return
        except PromptTooLong as exc:
            await self._refuse(usage, mid, "too_long", str(exc))
            return
        if self._settings.log_prompts:
            self._log.info("prompt", id=mid, messages=kept)
        self._request_id = request_id = uuid.uuid4().hex
        request = GenerationRequest(request_id, prompt_ids, params)
        epoch = self._epoch if stateful else None
        self._task = asyncio.create_task(self._stream(mid, request, kept, epoch, usage))

    async def _stream(
        self,
        mid: str | None,
        request: GenerationRequest,
        kept: list[Message],
        epoch: int | None,
        usage: RequestMetrics,
    ) -> None:
        reply: list[str] = []
        try:
            async for event in self._engine.generate(request):
                if isinstance(event, Queued):
                    await self._send(wire.start(mid, event.position))
                elif isinstance(event, TextDelta):
                    await self._send(wire.token(mid, event.text))
                    usage.tokens_sent(event.completion_tokens)
                    reply.append(event.text)
                elif isinstance(event, Finished):
                    await self._finish(mid, request, event, kept, epoch, "".join(reply), usage)
        except EngineOverloaded as exc:
            await self._refuse(usage, mid, "overloaded", str(exc), exc.retry_after)
        except EngineError as exc:
            usage.ended("error")
            self._log.error(
                "chat_failed", id=mid, request_id=request.request_id, outcome="error", error=str(exc)
            )
            await self._send(wire.error(mid, "internal", "the model failed to generate a reply"))
        except asyncio.CancelledError:
            usage.ended("cancelled")
            self._log.info("chat_abandoned", id=mid, request_id=request.request_id, outcome="cancelled")
            raise

    async def _finish(
        self,
        mid: str | None,
        request: GenerationRequest,
        event: Finished,
        kept: list[Message],
        epoch: int | None,
        reply: str,
        usage: RequestMetrics,
    ) -> None:
        speed = event.completion_tokens / event.generation_seconds if event.generation_seconds else 0.0
        ttft = usage.ttft_seconds
        if epoch == self._epoch:
            self._remember(kept, reply)
        frame = wire.done(mid, event.reason, event.prompt_tokens, event.completion_tokens, ttft * 1000, speed)
        await self._send(frame)
        usage.finished(event.reason, event.prompt_tokens, event.completion_tokens, event.queue_seconds, speed)
        self._log.info(
            "chat_done",
            id=mid,
            request_id=request.request_id,
            outcome=event.reason,
            prompt_tokens=event.prompt_tokens,
            completion_tokens=event.completion_tokens,
            ttft_ms=round(ttft * 1000, 1),
            tokens_per_second=round(speed, 1),
            queue_ms=round(event.queue_seconds * 1000, 1),
        )

    def _remember(self, kept: list[Message], reply: str) -> None:
        # A reply cut short still happened from the user's point of view; an empty one did not.
        if reply:
            self.history = [*kept, {"role": "assistant", "content": reply}]
        else:
            self.history = kept[:-1]
