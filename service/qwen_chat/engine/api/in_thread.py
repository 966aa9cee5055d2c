"""The engine with its core as a thread of this worker (QWEN_CHAT_ENGINE_PROCESS=false).

One process, no channel: the core's steps hop onto the event loop with `call_soon_threadsafe`. The decoding
thread and the event loop then share one GIL, which costs the busy worker throughput (docs/engines.md);
this layout stays for platforms where a child process is not wanted, and as the benchmark's baseline.
"""

from __future__ import annotations

import asyncio
from typing import Any

from qwen_chat.engine.api.streams import StreamingEngine
from qwen_chat.engine.core import make_core
from qwen_chat.engine.core.base import EngineCore
from qwen_chat.engine.model.loader import LoadedModel, load_model, unload
from qwen_chat.engine.wire import ModelFacts, Step, Submit
from qwen_chat.settings import Settings


class ThreadEngine(StreamingEngine):
    def __init__(self, settings: Settings) -> None:
        super().__init__(settings)
        self._loaded: LoadedModel | None = None
        self._core: EngineCore | None = None

    async def _load(self) -> tuple[ModelFacts, Any]:
        loop = asyncio.get_running_loop()
        self._loaded = loaded = await asyncio.to_thread(load_model, self._settings)

        def sink(step: Step) -> None:
            loop.call_soon_threadsafe(self._on_step, step)

        self._core = core = make_core(self._settings, loaded, sink)
        await asyncio.to_thread(core.start)
        return core.facts(), loaded.tokenizer

    def _submit(self, request: Submit) -> None:
        assert self._core is not None
        self._core.submit(request)

    def _send_cancel(self, request_id: str) -> None:
        if self._core is not None:
            self._core.cancel(request_id)

    async def _shut_down(self) -> None:
        core, self._core = self._core, None
        if core is not None:
            await asyncio.to_thread(core.stop)
        unload(self._loaded)
        self._loaded = None
