"""The real tiny model's engine (its tokenizer, template and prompt path) that replies with a script instead
of sampling, and keeps the prompt ids of every request: what reached the model, exactly."""

from __future__ import annotations

import asyncio
from collections import defaultdict
from collections.abc import AsyncIterator

from qwen_chat.engine.api.in_thread import ThreadEngine
from qwen_chat.engine.api.interface import (
    EngineError,
    Finished,
    GenerationEvent,
    GenerationRequest,
    Queued,
    TextDelta,
)
from qwen_chat.settings import Settings

# What Qwen2.5 writes when it calls a tool, cut where a stream may cut it: inside both markers.
SCRIPT = [
    "Let me look",
    " that up.\n<tool",
    '_call>\n{"name": "get_weather", "argu',
    'ments": {"city": "Rome"}}\n</tool_c',
    "all>",
]

# What Qwen3.5 writes (its XML format, vLLM's qwen3_coder) after thinking, as the tiny qwen3_5 model's
# template opens `<think>` for it: two calls, cut inside the markers and the values.
XML_SCRIPT = [
    "The user wants Rome.\n</think>\n\nLet me look",
    " that up.\n\n<tool",
    "_call>\n<function=get_weather>\n<parameter=city>\nRo",
    "me\n</parameter>\n<parameter=days>\n3\n</para",
    "meter>\n</function>\n</tool_call>\n<tool_call>\n<function=get_time>\n</function>\n</tool_c",
    "all>",
]


class ScriptedEngine(ThreadEngine):
    """Replies with `script` (`SCRIPT` unless given) to every chat; `prompts_seen` holds each request's
    prompt ids."""

    def __init__(self, settings: Settings, script: list[str] | None = None) -> None:
        super().__init__(settings)
        self.prompts_seen: list[list[int]] = []
        self.script = script or SCRIPT

    async def generate(self, request: GenerationRequest) -> AsyncIterator[GenerationEvent]:  # type: ignore[override]
        self.prompts_seen.append(request.prompt_ids)
        yield Queued(0)
        for n, piece in enumerate(self.script, 1):
            yield TextDelta(piece, n)
        yield Finished("stop", len(request.prompt_ids), len(self.script), 0.0, 0.01)


class FailingEngine(ThreadEngine):
    """The real tiny model's engine (its tokenizer and template), whose every reply fails after a token, with
    words a client must never see."""

    async def generate(self, request: GenerationRequest) -> AsyncIterator[GenerationEvent]:  # type: ignore[override]
        yield Queued(0)
        yield TextDelta("Let", 1)
        raise EngineError("CUDA error: an illegal memory access at /opt/secret/kernel.cu")


class HangingEngine(ThreadEngine):
    """The real tiny model's engine whose every reply sends a token, then waits until it is aborted and
    finishes `cancelled`, as a reply the drain cuts short does. `admitted` counts the replies begun."""

    def __init__(self, settings: Settings) -> None:
        super().__init__(settings)
        self._aborted: defaultdict[str, asyncio.Event] = defaultdict(asyncio.Event)

    async def generate(self, request: GenerationRequest) -> AsyncIterator[GenerationEvent]:  # type: ignore[override]
        yield Queued(0)
        yield TextDelta("Let", 1)
        await self._aborted[request.request_id].wait()
        yield Finished("cancelled", len(request.prompt_ids), 1, 0.0, 0.01)

    def abort(self, request_id: str) -> None:
        self._aborted[request_id].set()
