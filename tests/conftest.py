"""Shared fixtures: the tiny model (built once per session), Secret-like credential folders, live servers."""

from __future__ import annotations

import asyncio
import contextlib
import os
import socket
import threading
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import httpx
import pytest
import uvicorn

from qwen_chat.app import create_app
from qwen_chat.logging_setup import configure_logging
from qwen_chat.settings import Settings
from qwen_chat.tiny_model import make_tiny_model

KEYS = {"alice": "alice-key-0123456789", "bob": "bob-key-9876543210"}

# No test may reach a model hub.
os.environ["HF_HUB_OFFLINE"] = "1"
os.environ["TRANSFORMERS_OFFLINE"] = "1"
configure_logging("console", "warning")


def pytest_collection_modifyitems(config: pytest.Config, items: list[pytest.Item]) -> None:
    """Tests marked `gpu` are deselected (not skipped) where torch sees no CUDA device."""
    import torch

    if torch.cuda.is_available():
        return
    gpu = [item for item in items if item.get_closest_marker("gpu")]
    if gpu:
        config.hook.pytest_deselected(items=gpu)
        items[:] = [item for item in items if not item.get_closest_marker("gpu")]


@pytest.hookimpl(hookwrapper=True)
def pytest_runtest_makereport(item: pytest.Item, call: pytest.CallInfo[None]) -> Any:
    """In CI a skipped test is a failed test: whatever it needs must be installed, not skipped."""
    outcome = yield
    report = outcome.get_result()
    if report.skipped and os.environ.get("CI", "").lower() == "true":
        report.outcome = "failed"
        report.longrepr = f"skipped in CI (CI=true makes this a failure): {report.longrepr}"


@pytest.fixture
def anyio_backend() -> str:
    return "asyncio"


@pytest.fixture(scope="session")
def tiny_model_dir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return make_tiny_model(tmp_path_factory.mktemp("tiny-model"))


class SecretVolume:
    """A folder laid out as kubelet lays out a Secret volume, updated the way kubelet updates it."""

    def __init__(self, root: Path) -> None:
        self.root = root
        self.root.mkdir(parents=True, exist_ok=True)
        self._version = 0

    def write(self, keys: dict[str, str]) -> None:
        self._version += 1
        data = self.root / f"..2026_11_23_00_00_{self._version:02d}.000000000"
        data.mkdir()
        for user, key in keys.items():
            (data / user).write_text(key + "\n")
        # Atomic swap of `..data`, then user links through it; stale links disappear.
        tmp_link = self.root / "..data_tmp"
        tmp_link.symlink_to(data.name)
        tmp_link.replace(self.root / "..data")
        for user in keys:
            link = self.root / user
            if not link.is_symlink():
                link.symlink_to(f"..data/{user}")
        for entry in self.root.iterdir():
            if not entry.name.startswith(".") and entry.name not in keys:
                entry.unlink()


@pytest.fixture
def secret_volume(tmp_path: Path) -> SecretVolume:
    volume = SecretVolume(tmp_path / "credentials")
    volume.write(KEYS)
    return volume


@pytest.fixture
def make_settings(tiny_model_dir: Path, tmp_path: Path) -> Callable[..., Settings]:
    def make(**overrides: Any) -> Settings:
        if "credentials_dir" not in overrides:
            volume = SecretVolume(tmp_path / f"credentials-{len(list(tmp_path.iterdir()))}")
            volume.write(KEYS)
            overrides["credentials_dir"] = volume.root
        values: dict[str, Any] = {
            "model": str(tiny_model_dir),
            "device": "cpu",
            "max_new_tokens": 512,
            "credentials_reload_seconds": 0.2,
        }
        values.update(overrides)
        return Settings(**values)

    return make


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


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
    def engine(self) -> Any:
        return self.app.state.engine


def wait_until(predicate: Callable[[], bool], timeout: float = 30.0, interval: float = 0.05) -> None:
    deadline = time.monotonic() + timeout
    while not predicate():
        if time.monotonic() > deadline:
            raise TimeoutError("condition not met in time")
        time.sleep(interval)


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


@pytest.fixture
def serve(
    make_settings: Callable[..., Settings],
) -> Callable[..., contextlib.AbstractContextManager[LiveServer]]:
    def start(**overrides: Any) -> contextlib.AbstractContextManager[LiveServer]:
        settings = make_settings(**overrides)
        return run_server(create_app(settings), settings)

    return start


@pytest.fixture
def server(serve: Callable[..., contextlib.AbstractContextManager[LiveServer]]) -> Iterator[LiveServer]:
    with serve() as live:
        yield live


def run(coro: Any) -> Any:
    return asyncio.run(coro)
