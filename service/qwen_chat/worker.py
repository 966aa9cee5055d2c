"""The gunicorn worker class: uvicorn's worker, with the WebSocket settings and the SIGTERM drain this
service needs."""

from __future__ import annotations

import asyncio
import signal
import sys
from types import FrameType
from typing import Any, ClassVar

from gunicorn.arbiter import Arbiter
from uvicorn.server import Server
from uvicorn_worker import UvicornWorker

from qwen_chat import drain
from qwen_chat.settings import get_settings


class DrainingServer(Server):
    """On the first SIGTERM, drain (see drain.py) before exiting; another signal exits at once."""

    _drain_task: asyncio.Task[None] | None = None

    def handle_exit(self, sig: int, frame: FrameType | None) -> None:
        handler = drain.handler()
        if sig != signal.SIGTERM or self._drain_task is not None or handler is None or self.should_exit:
            super().handle_exit(sig, frame)
            return
        loop = asyncio.get_event_loop()
        loop.call_soon_threadsafe(self._start_drain, handler)

    def _start_drain(self, handler: Any) -> None:
        async def drain_then_exit() -> None:
            try:
                await handler()
            finally:
                self.should_exit = True

        self._drain_task = asyncio.ensure_future(drain_then_exit())


class QwenChatWorker(UvicornWorker):
    CONFIG_KWARGS: ClassVar[dict[str, Any]] = {
        "loop": "auto",
        "http": "auto",
        "ws": "websockets-sansio",
        "lifespan": "on",
    }

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        # uvicorn closes a connection with 1009 when a frame is larger than this.
        self.config.ws_max_size = get_settings().max_message_bytes

    async def _serve(self) -> None:
        self.config.app = self.wsgi
        server = DrainingServer(config=self.config)
        self._install_sigquit_handler()
        await server.serve(sockets=self.sockets)
        if not server.started:
            sys.exit(Arbiter.WORKER_BOOT_ERROR)
