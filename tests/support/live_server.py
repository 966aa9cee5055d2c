"""Real servers on 127.0.0.1 for tests: free ports, polling, and the app under uvicorn in a thread."""

from __future__ import annotations

import contextlib
import socket
import threading
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from typing import Any

import httpx
import uvicorn

from qwen_chat.service import Service
from qwen_chat.settings import Settings


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


def wait_until(predicate: Callable[[], bool], timeout: float = 30.0, interval: float = 0.05) -> None:
    deadline = time.monotonic() + timeout
    while not predicate():
        if time.monotonic() > deadline:
            raise TimeoutError("condition not met in time")
        time.sleep(interval)


class Loopback:
    """A server listening on 127.0.0.1:`port`."""

    port: int

    @property
    def http(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    @property
    def ws(self) -> str:
        return f"ws://127.0.0.1:{self.port}/ws"


@dataclass
class LiveServer(Loopback):
    app: Any
    port: int

    @property
    def service(self) -> Service:
        service = self.app.state.service
        assert isinstance(service, Service)
        return service

    @property
    def engine(self) -> Any:
        return self.service.engine


def _ready(url: str) -> bool:
    with contextlib.suppress(httpx.HTTPError):
        return httpx.get(url + "/readyz", timeout=2).status_code == 200
    return False


@contextlib.contextmanager
def run_server(app: Any, settings: Settings, wait_ready: bool = True) -> Iterator[LiveServer]:
    """Real uvicorn on 127.0.0.1 in a thread (so tests can look at the engine), stopped on exit."""
    port = free_port()
    config = uvicorn.Config(
        app,
        host="127.0.0.1",
        port=port,
        ws="websockets-sansio",
        ws_max_size=settings.max_message_bytes,
        lifespan="on",
        log_config=None,
        access_log=False,
    )
    server = uvicorn.Server(config)
    thread = threading.Thread(target=server.run, daemon=True)
    thread.start()
    live = LiveServer(app, port)
    try:
        wait_until(lambda: server.started, timeout=30)
        if wait_ready:
            wait_until(lambda: _ready(live.http), timeout=60)
        yield live
    finally:
        server.should_exit = True
        thread.join(timeout=30)
