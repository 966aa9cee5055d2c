"""Reading an engine's event stream in tests: a whole reply and how it ended."""

from __future__ import annotations

from typing import Any

from qwen_chat.engine.api.interface import Finished, GenerationRequest, TextDelta


async def collect(engine: Any, req: GenerationRequest) -> tuple[str, Finished]:
    text = ""
    async for event in engine.generate(req):
        if isinstance(event, TextDelta):
            text += event.text
        elif isinstance(event, Finished):
            return text, event
    raise AssertionError("no Finished event")
