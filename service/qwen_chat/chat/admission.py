"""Admitting a chat request, the same for every transport: text check, drain, rate limit, prompt budget,
the user's cap on replies at once, queue. A request either becomes a `ChatStream` (under its deadline, when it
has one: `chat/deadline.py`) or is refused with a `Refusal`, which the transport that answers it renders and
counts; transports only translate."""

from __future__ import annotations

import asyncio
import uuid
from collections.abc import Awaitable, Callable, Iterator
from contextlib import contextmanager
from typing import Any

from qwen_chat import tracing
from qwen_chat.chat.deadline import effective_timeout
from qwen_chat.chat.rate_limit import RateLimiter
from qwen_chat.chat.reasoning import ReasoningSplit
from qwen_chat.chat.reply_options import ReplyOptions
from qwen_chat.chat.stop_strings import StopStrings
from qwen_chat.chat.stream import ChatStream
from qwen_chat.chat.surrogates import refuse_non_text
from qwen_chat.engine.api.interface import (
    Engine,
    EngineNotReady,
    EngineOverloaded,
    GenerationRequest,
    Queued,
    UserAtCapacity,
)
from qwen_chat.engine.model.prompts import Message, Prompts, PromptTooLong, TemplateArgs, TemplateRefused
from qwen_chat.errors import ErrorCode, Refusal
from qwen_chat.metrics import USER_REQUESTS, RequestMetrics, Transport
from qwen_chat.runtime.drain import Drain
from qwen_chat.sampling_params import SamplingParams
from qwen_chat.settings import Settings


class Admission:
    def __init__(self, settings: Settings, engine: Engine, rate_limiter: RateLimiter, drain: Drain) -> None:
        self._settings = settings
        self._engine = engine
        self._rate_limiter = rate_limiter
        self._drain = drain

    async def start(
        self,
        user: str,
        transport: Transport,
        messages: list[Message],
        params: SamplingParams,
        stop: list[str] | None = None,
        usage: RequestMetrics | None = None,
        template_args: TemplateArgs | None = None,
        options: ReplyOptions | None = None,
        deadline: float | None = None,
        field: str = "messages",
    ) -> ChatStream:
        """Admit one chat request, or raise `Refusal` (not text, draining, rate limit, too long, a
        conversation the template refuses, not ready, queue full). `deadline`: the request's own in seconds,
        within the operator's bound; `field`: the conversation's, as the client's API names it."""
        usage = self._usage(usage, user, transport, "chat")
        with tracing.ended_by_exception(usage.trace):  # however admission ends early, the span ends
            options = options or ReplyOptions()
            refuse_non_text(messages, field, "a message")
            prompts = self.prompts()
            template_args = chat_template_args(prompts, template_args, options)

            async def encode() -> tuple[list[Message], list[int]]:
                # Tokenising a long conversation takes milliseconds: keep it off the event loop.
                return await asyncio.to_thread(prompts.fit, messages, template_args)

            stream = await self._admit(user, transport, encode, field, params, stop, usage, options, deadline)
            if prompts.reasons and options.constraint is None:  # a grammar's reply is all answer
                stream.reasoning = ReasoningSplit(opened=prompts.opens_reasoning(stream.request.prompt_ids))
            return stream

    def prompts(self) -> Prompts:
        """The engine's prompts; before the model is ready, an `overloaded` refusal with a retry hint."""
        try:
            return self._engine.prompts
        except EngineNotReady as exc:
            raise Refusal(ErrorCode.OVERLOADED, str(exc), retry_after=exc.retry_after) from None

    async def start_prompt(
        self,
        user: str,
        transport: Transport,
        prompt_ids: list[int],
        params: SamplingParams,
        stop: list[str] | None = None,
        options: ReplyOptions | None = None,
        deadline: float | None = None,
    ) -> ChatStream:
        """Admit a raw prompt (`/v1/completions`): no chat template, no turns to drop."""
        usage = self._usage(None, user, transport, "text_completion")

        async def encode() -> tuple[list[Message], list[int]]:
            return [], within_budget(self._engine.prompts, prompt_ids)

        with tracing.ended_by_exception(usage.trace):
            return await self._admit(
                user, transport, encode, "prompt", params, stop, usage, options or ReplyOptions(), deadline
            )

    def _usage(
        self, usage: RequestMetrics | None, user: str, transport: Transport, operation: str
    ) -> RequestMetrics:
        """The request's metrics, with its spans begun while traces are on (unless /ws began them)."""
        model = self._settings.model_name
        usage = usage or RequestMetrics(model, transport)
        if usage.trace is None:
            usage.trace = tracing.start_reply(model, transport.value, user, operation)
        return usage

    async def _admit(
        self,
        user: str,
        transport: Transport,
        encode: Callable[[], Awaitable[tuple[list[Message], list[int]]]],
        prompt_field: str,
        params: SamplingParams,
        stop: list[str] | None,
        usage: RequestMetrics,
        options: ReplyOptions,
        deadline: float | None,
    ) -> ChatStream:
        if self._drain.draining:
            raise self._drain.refusal()
        # Without keys every request is one anonymous user: a cap would only shrink the server.
        capped = user if self._settings.auth_enabled else None
        engine = self._engine
        try:
            engine.check_user_cap(capped)  # first: a refused reply must not spend the user's rate limit
        except UserAtCapacity as exc:
            raise _at_capacity(exc) from None
        retry_after = await self._rate_limiter.hit(user)
        if retry_after is not None:
            message = f"rate limit {self._settings.rate_limit} reached"
            raise Refusal(ErrorCode.RATE_LIMITED, message, retry_after=retry_after)
        try:
            with prompt_refusals(prompt_field):
                kept, prompt_ids = await encode()
            request = GenerationRequest(
                uuid.uuid4().hex,
                prompt_ids,
                params,
                constraint=options.constraint,
                top_logprobs=options.top_logprobs,
                user=capped,
            )
            events = engine.generate(request)
            first = await anext(events)
        except UserAtCapacity as exc:  # it reached the cap while its prompt was encoded
            raise _at_capacity(exc) from None
        except (EngineNotReady, EngineOverloaded) as exc:
            raise Refusal(ErrorCode.OVERLOADED, str(exc), retry_after=exc.retry_after) from None
        assert isinstance(first, Queued)
        stops = StopStrings(stop or [])
        stream = ChatStream(engine, request, kept, first.position, usage, stops, events)
        stream.tools = options.tool_parser
        self._drain.track(stream)
        bound = effective_timeout(self._settings.request_timeout, deadline)
        if bound is not None:  # from the request's arrival (`usage.received`): time spent so far counts
            stream.expire_after(bound)
        if isinstance(usage.trace, tracing.ReplyTrace):
            shown = kept if self._settings.log_prompts and kept else None
            usage.trace.admitted(request.request_id, first.position, len(prompt_ids), params, shown)
        return stream


def _at_capacity(exc: UserAtCapacity) -> Refusal:
    return Refusal(ErrorCode.RATE_LIMITED, str(exc), retry_after=exc.retry_after, cause=USER_REQUESTS)


def chat_template_args(
    prompts: Prompts, template_args: TemplateArgs | None, options: ReplyOptions
) -> TemplateArgs | None:
    """What a chat's template is given: the request's arguments, the tools it lists, and no thinking block
    when a grammar shapes the answer from its first token (it would cut one off)."""
    template_args = with_tools(prompts, template_args, options.tools)
    if options.constraint is not None and prompts.reasons:
        template_args = {**(template_args or {}), "enable_thinking": False}
    return template_args


async def render_chat(
    prompts: Prompts, messages: list[Message], template_args: TemplateArgs | None, field: str
) -> list[int]:
    """The token ids a chat of `messages` would be prefilled with (its oldest turns dropped as `start`
    drops them), without running it: what vLLM's render endpoints answer."""
    refuse_non_text(messages, field, "a message")
    with prompt_refusals(field):
        _, ids = await asyncio.to_thread(prompts.fit, messages, template_args)
    return ids


@contextmanager
def prompt_refusals(field: str) -> Iterator[None]:
    """A prompt that cannot be served, as the refusal naming the client's `field`: too long, or a
    conversation the model's template refuses."""
    try:
        yield
    except PromptTooLong as exc:
        raise Refusal(ErrorCode.TOO_LONG, str(exc), param=field) from None
    except TemplateRefused as exc:
        raise Refusal(ErrorCode.BAD_REQUEST, str(exc), param=field) from None


def within_budget(prompts: Prompts, prompt_ids: list[int]) -> list[int]:
    """A raw prompt (no turns to drop) as it is; `PromptTooLong` past the input budget."""
    if len(prompt_ids) > prompts.max_input_tokens:
        raise PromptTooLong(len(prompt_ids), prompts.max_input_tokens)
    return prompt_ids


def render_prompt(prompts: Prompts, prompt_ids: list[int], field: str) -> list[int]:
    """`render_chat` for a raw prompt: its ids, or the refusal `start_prompt` gives it."""
    with prompt_refusals(field):
        return within_budget(prompts, prompt_ids)


def with_tools(
    prompts: Prompts, template_args: TemplateArgs | None, tools: list[dict[str, Any]] | None
) -> TemplateArgs | None:
    """The template's arguments with the tools it lists (as a chat's prompt has them, and `/tokenize`'s);
    tools for a template that takes none are refused."""
    if tools is None:
        return template_args
    refuse_non_text(tools, "tools", "a tool")
    if not prompts.takes_tools:
        message = "this model's chat template does not take tools"
        raise Refusal(ErrorCode.BAD_REQUEST, message, param="tools", status=400)
    return {**(template_args or {}), "tools": tools}
