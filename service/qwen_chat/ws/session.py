"""One /ws connection's chat: its conversation, its one generation at a time, and the frames it sends."""

from __future__ import annotations

import asyncio
import json
from collections.abc import Awaitable, Callable
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

import structlog
from starlette.websockets import WebSocketDisconnect

from qwen_chat import tracing
from qwen_chat.chat.reasoning import ReasoningDelta
from qwen_chat.chat.reply_options import reply_options
from qwen_chat.chat.stream import ChatStream, tokens_per_second
from qwen_chat.chat.tool_calls import ToolCall, ToolCallDelta
from qwen_chat.engine.api.interface import Finished
from qwen_chat.engine.model.prompts import Message
from qwen_chat.errors import ErrorCode, Refusal
from qwen_chat.metrics import CLIENT_DISCONNECTS, RequestMetrics, Transport
from qwen_chat.sampling_params import resolve
from qwen_chat.service import Service
from qwen_chat.ws import protocol as wire

if TYPE_CHECKING:
    from opentelemetry.context import Context

Send = Callable[[dict[str, Any]], Awaitable[None]]
log = structlog.get_logger(__name__)


class ChatSession:
    def __init__(
        self,
        service: Service,
        user: str,
        send: Send,
        log_context: dict[str, Any],
        trace_parent: Context | None = None,
    ) -> None:
        self._service = service
        self._trace_parent = trace_parent
        self._connection_id = str(log_context.get("connection_id", ""))
        self._settings = service.settings
        self._user = user
        self._send = send
        self._log = log.bind(**log_context)
        self.history: list[Message] = []
        self._task: asyncio.Task[None] | None = None
        self._stream: ChatStream | None = None
        self._added = 0
        self._epoch = 0  # bumped by reset, so a reply that ends after a reset is not added to the new chat

    @property
    def generating(self) -> bool:
        return self._task is not None and not self._task.done()

    async def handle_text(self, text: str) -> None:
        usage = RequestMetrics(self._settings.model_name, Transport.WS)
        try:
            message = wire.parse_frame(text)
        except wire.ProtocolError as exc:
            await self._refuse(usage, exc.message_id, exc)
            return
        if isinstance(message, wire.Cancel):
            self.cancel()
        elif isinstance(message, wire.Reset):
            self.cancel()
            self.history = []
            self._epoch += 1
        else:
            attributes = {"gen_ai.conversation.id": self._connection_id}  # the messages of one socket
            if message.id is not None:
                attributes["qwen_chat.message_id"] = message.id
            usage.trace = tracing.start_reply(
                self._settings.model_name,
                Transport.WS.value,
                self._user,
                parent=self._trace_parent,
                server=True,
                attributes=attributes,
            )
            # Its log lines, and the task that streams it, carry its ids; a bug in it still ends its span.
            with tracing.active(usage.trace), tracing.ended_by_exception(usage.trace):
                await self._chat(message, usage)

    def cancel(self) -> None:
        if self.generating and self._stream is not None:
            self._stream.cancel()

    async def close(self) -> None:
        """The client is gone: stop the generation (freeing its slot) and wait for it to end."""
        if self._task is not None:
            if not self._task.done():
                CLIENT_DISCONNECTS.labels(Transport.WS).inc()
            self._task.cancel()
            await asyncio.gather(self._task, return_exceptions=True)
        if self._stream is not None and not self._stream.closed.is_set():
            # A task cancelled before its first step never runs `_run` (a chat followed at once by a
            # close does that): end its stream here, or the generation runs on for nobody and the drain
            # waits for it.
            self._stream.usage.ended("cancelled")
            await self._stream.aclose()

    async def _refuse(self, usage: RequestMetrics, mid: str | None, refusal: Refusal) -> None:
        """Every chat this connection refuses is answered, and counted, here."""
        usage.refused(refusal)
        self._log.info("chat_rejected", id=mid, outcome=refusal.code.ws)
        await self._send(refusal.ws_frame(mid))

    async def _chat(self, message: wire.ChatRequest, usage: RequestMetrics) -> None:
        mid = message.id
        if self.generating:
            busy = Refusal(ErrorCode.BUSY, "a reply is still streaming: wait for it or cancel it")
            await self._refuse(usage, mid, busy)
            return
        stateful = message.messages is None
        try:
            messages = self._conversation(message)
            params = resolve(self._service.engine.sampling_defaults, message.params, "params.max_new_tokens")
            options = reply_options(
                message.tools,
                message.tool_choice,
                message.parallel_tool_calls,
                message.params.response_format,
            )
            admission = self._service.admission
            switches: dict[str, object] = {
                "enable_thinking": message.enable_thinking,
                "preserve_thinking": message.preserve_thinking,
            }
            template_args = {k: v for k, v in switches.items() if v is not None} or None
            stream = await admission.start(
                self._user,
                Transport.WS,
                messages,
                params,
                usage=usage,
                template_args=template_args,
                options=options,
                deadline=message.params.timeout,
            )
        except Refusal as refusal:
            await self._refuse(usage, mid, refusal)
            return
        if self._settings.log_prompts:
            self._log.info("prompt", id=mid, messages=stream.messages)
        self._stream = stream
        epoch = self._epoch if stateful else None
        self._added = len(messages) - len(self.history) if stateful else 0  # the turns this chat adds
        self._task = asyncio.create_task(self._run(mid, stream, epoch))

    def _conversation(self, message: wire.ChatRequest) -> list[Message]:
        """The turns the model sees: this connection's chat and the new turn, or the client's own."""
        if message.messages is not None:
            return [template_turn(m) for m in message.messages]
        if message.content is not None:
            return [*self.history, {"role": "user", "content": message.content}]
        last = self.history[-1] if self.history else {}
        if not last.get("tool_calls"):
            raise Refusal(ErrorCode.BAD_REQUEST, "tool_results: the last reply called no tools")
        results = message.tool_results or []
        return [*self.history, *({"role": "tool", **r.model_dump()} for r in results)]

    async def _run(self, mid: str | None, stream: ChatStream, epoch: int | None) -> None:
        reply: list[str] = []
        reasoning: list[str] = []
        calls: list[ToolCall] = []
        try:
            await self._send(wire.start(mid, stream.queue_position))
            async for event in stream.events():
                if isinstance(event, Finished):
                    said = Said("".join(reply), "".join(reasoning), calls)
                    await self._finish(mid, stream, event, epoch, said)
                elif isinstance(event, ReasoningDelta):
                    reasoning.append(event.text)
                    await self._send(wire.reasoning(mid, event.text))
                elif isinstance(event, ToolCallDelta):
                    call = event.call
                    calls.append(call)
                    await self._send(wire.tool_call(mid, call.id, call.name, call.arguments))
                else:
                    await self._send(wire.token(mid, event.text))
                    reply.append(event.text)
        except WebSocketDisconnect:  # nobody left to tell (`send` says so): counted cancelled
            raise
        except Exception as exc:  # the engine failed, or our code did: the client is told, the socket stays
            await self._send(stream.failure(exc, self._log, id=mid).ws_frame(mid))
        except asyncio.CancelledError:
            self._log.info(
                "chat_abandoned", id=mid, request_id=stream.request.request_id, outcome="cancelled"
            )
            raise
        finally:
            await stream.aclose()

    async def _finish(
        self,
        mid: str | None,
        stream: ChatStream,
        event: Finished,
        epoch: int | None,
        said: Said,
    ) -> None:
        speed = tokens_per_second(event)
        ttft = stream.usage.ttft_seconds
        if epoch == self._epoch:
            self._remember(stream.messages, said)
        # A reply cut at its token limit or its deadline says so, whatever calls it made before.
        reason = "tool_calls" if said.calls and event.reason not in ("length", "timeout") else event.reason
        frame = wire.done(
            mid, reason, event.prompt_tokens, event.completion_tokens, ttft * 1000, speed, event.cached_tokens
        )
        await self._send(frame)
        self._log.info(
            "chat_done",
            id=mid,
            request_id=stream.request.request_id,
            outcome=event.reason,
            prompt_tokens=event.prompt_tokens,
            completion_tokens=event.completion_tokens,
            ttft_ms=round(ttft * 1000, 1),
            tokens_per_second=round(speed, 1),
            queue_ms=round(event.queue_seconds * 1000, 1),
        )

    def _remember(self, kept: list[Message], said: Said) -> None:
        """The reply joins the conversation with its thinking as `reasoning_content`: the chat template
        decides whether a later prompt shows it (Qwen3's after the last user turn, as in a tool loop;
        Qwen3.6's everywhere with `preserve_thinking`). A reply cut short still happened from the user's
        point of view, one cut off while it was still thinking too (the user saw the thinking); an empty one
        did not."""
        if not (said.reply or said.reasoning or said.calls):  # without the turns this chat added
            self.history = kept[: len(kept) - max(self._added, 1)]
            return
        turn: Message = {"role": "assistant", "content": said.reply}
        if said.reasoning:
            turn["reasoning_content"] = said.reasoning
        if said.calls:
            turn["tool_calls"] = [template_call(c) for c in said.calls]
        self.history = [*kept, turn]


@dataclass(frozen=True)
class Said:
    """What a reply said: its answer, its thinking and its tool calls."""

    reply: str
    reasoning: str
    calls: list[ToolCall]


def template_call(call: ToolCall) -> dict[str, Any]:
    """A call as Qwen's templates render it: arguments as an object."""
    return {
        "id": call.id,
        "type": "function",
        "function": {"name": call.name, "arguments": json.loads(call.arguments)},
    }


def template_turn(message: wire.Message) -> Message:
    turn: Message = {"role": message.role, "content": message.content}
    if message.tool_calls:
        turn["tool_calls"] = [
            {
                "id": c.id,
                "type": "function",
                "function": {"name": c.function.name, "arguments": c.function.arguments},
            }
            for c in message.tool_calls
        ]
    if message.tool_call_id is not None:
        turn["tool_call_id"] = message.tool_call_id
    return turn
