"""The gunicorn worker class: uvicorn's worker, with the WebSocket settings and the SIGTERM drain this
service needs, and an exit that stops the whole service when the model cannot be loaded.

A model that fails to load (a wrong path, a corrupt weight file) will fail again in a replacement worker,
so restarting it would only loop. Instead the worker exits with gunicorn's WORKER_BOOT_ERROR (3): the
master then stops every worker and exits 3 itself ("Worker failed to boot."), and the orchestrator sees
a failed container whose log says why (`model_load_failed`).
"""

from __future__ import annotations

import asyncio
import os
import signal
import sys
from types import FrameType
from typing import Any, ClassVar

from gunicorn.arbiter import Arbiter
from uvicorn.config import Config
from uvicorn.protocols.websockets.websockets_sansio_impl import WebSocketsSansIOProtocol
from uvicorn.server import Server
from uvicorn_worker import UvicornWorker

from qwen_chat.runtime.lifecycle import WorkerLifecycle
from qwen_chat.runtime.state_dir import StateDir
from qwen_chat.settings import get_settings


class DrainingServer(Server):
    """On the first SIGTERM, run the app's drain (drain.py) before exiting; another signal exits at once."""

    def __init__(self, config: Config, lifecycle: WorkerLifecycle | None) -> None:
        super().__init__(config)
        self._lifecycle = lifecycle
        self._drain_task: asyncio.Task[None] | None = None
        # Set when this worker could not load the model: it then exits with WORKER_BOOT_ERROR.
        self.load_failed = False

    def handle_exit(self, sig: int, frame: FrameType | None) -> None:
        handler = self._lifecycle.drain if self._lifecycle is not None else None
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

    def stop_after_failed_load(self) -> bool:
        """The model could not be loaded: stop with WORKER_BOOT_ERROR, so that gunicorn stops the service
        instead of restarting the worker in a loop. Returns whether this worker exits so; False when it
        already stops, or when another worker of the pod already does (the master then stops this one)."""
        if self.should_exit:
            return False
        state_dir = get_settings().state_dir
        if state_dir is not None:
            marker = StateDir(state_dir).boot_failed
            try:
                os.close(os.open(marker, os.O_CREAT | os.O_EXCL | os.O_WRONLY, 0o600))
            except FileExistsError:
                return False
            except OSError:
                pass  # no marker possible: exit anyway, a second exit only makes the master's halt noisier
        self.load_failed = True
        self.should_exit = True
        return True


class WebSocketProtocol(WebSocketsSansIOProtocol):
    """uvicorn's `websockets-sansio` protocol, minus two ERROR lines any client could trigger at will.

    After a denial response (our 401, 403 and 503 handshakes) uvicorn never marks the handshake done, so
    every refused key logged `ASGI callable returned without completing handshake.` at ERROR level: the
    same fix as the open upstream pull request Kludex/uvicorn#3138 (wsproto's implementation already does
    this). And a text frame that is not UTF-8 logged an ERROR with a traceback."""

    async def send(self, message: Any) -> None:
        await super().send(message)
        if message["type"] == "websocket.http.response.body" and not message.get("more_body", False):
            self.handshake_complete = True

    def send_receive_event_to_app(self) -> None:
        # A text frame that is not UTF-8 and slipped past the frame parser (a sequence cut short at its
        # end) is the client's fault: close with 1007 as uvicorn does, but say so in a warning, not in an
        # ERROR with a traceback that any client could write into the log at will.
        if self.curr_msg_data_type == "text" and not self.close_sent:
            try:
                b"".join(self.frames).decode()
            except UnicodeDecodeError:
                self.frames = []
                self.logger.warning("Invalid UTF-8 sequence received from client: closing with 1007.")
                self.conn.send_close(1007)
                self.handle_parser_exception()
                return
        super().send_receive_event_to_app()


class QwenChatWorker(UvicornWorker):
    CONFIG_KWARGS: ClassVar[dict[str, Any]] = {
        "loop": "auto",
        "http": "auto",
        "ws": WebSocketProtocol,
        "lifespan": "on",
    }

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        # uvicorn closes a connection with 1009 when a frame is larger than this.
        self.config.ws_max_size = get_settings().max_message_bytes

    async def _serve(self) -> None:
        self.config.app = self.wsgi
        lifecycle = WorkerLifecycle.of(self.wsgi)
        server = DrainingServer(config=self.config, lifecycle=lifecycle)
        if lifecycle is not None:
            lifecycle.host(on_load_failed=server.stop_after_failed_load)
        self._install_sigquit_handler()
        await server.serve(sockets=self.sockets)
        if not server.started or server.load_failed:
            sys.exit(Arbiter.WORKER_BOOT_ERROR)
