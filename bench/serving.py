"""Start `qwen-chat serve` on 127.0.0.1 for a benchmark, and stop it (by PID) afterwards."""

from __future__ import annotations

import os
import signal
import socket
import subprocess
import sys
import time
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path

import httpx
import psutil

KEY = "bench-key-0123456789abcdef"
OTHER_KEY = "bench-other-key-fedcba9876543210"  # a second user, for bench/fairness.py


@dataclass
class Served:
    proc: subprocess.Popen[bytes]
    port: int
    started: float  # monotonic time of the launch
    ready_seconds: float = 0.0

    @property
    def ws(self) -> str:
        return f"ws://127.0.0.1:{self.port}/ws"


@contextmanager
def serve(
    model: str, work: Path, timeout: float = 600, environ: dict[str, str] | None = None, **settings: object
) -> Iterator[Served]:
    """Run the service with a bench key (`KEY`) and yield once /readyz is 200; out of the box but for
    `settings` and `environ` (traces stay off unless `environ` turns them on)."""
    credentials = work / "credentials"
    credentials.mkdir(exist_ok=True)
    (credentials / "bench").write_text(KEY)
    (credentials / "other").write_text(OTHER_KEY)
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        port = sock.getsockname()[1]
    env = {
        **{k: v for k, v in os.environ.items() if not k.startswith("OTEL_")},
        **(environ or {}),
        "QWEN_CHAT_MODEL": model,
        "QWEN_CHAT_CREDENTIALS_DIR": str(credentials),
        "QWEN_CHAT_HOST": "127.0.0.1",
        "QWEN_CHAT_PORT": str(port),
        "QWEN_CHAT_LOG_LEVEL": "warning",
    }
    env.update({f"QWEN_CHAT_{name.upper()}": str(value) for name, value in settings.items()})
    started = time.monotonic()
    proc = subprocess.Popen(
        [str(Path(sys.executable).with_name("qwen-chat")), "serve"],
        env=env,
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
        start_new_session=True,
    )
    try:
        wait_ok(f"http://127.0.0.1:{port}/readyz", proc, timeout, "the service")
        yield Served(proc, port, started, time.monotonic() - started)
    finally:
        stop(proc, grace=120)


def wait_ok(url: str, proc: subprocess.Popen[bytes], timeout: float, what: str) -> None:
    """Poll `url` until it answers 200; raise if `proc` exits first or `timeout` seconds pass."""
    deadline = time.monotonic() + timeout
    while True:
        try:
            if httpx.get(url, timeout=2).status_code == 200:
                return
        except httpx.HTTPError:
            pass
        if proc.poll() is not None or time.monotonic() > deadline:
            raise RuntimeError(f"{what} did not become ready")
        time.sleep(0.05)


def stop(proc: subprocess.Popen[bytes], grace: float) -> None:
    """SIGTERM the process group (started with start_new_session), SIGKILL what is left after `grace` s."""
    os.killpg(proc.pid, signal.SIGTERM)
    try:
        proc.wait(timeout=grace)
    except subprocess.TimeoutExpired:
        os.killpg(proc.pid, signal.SIGKILL)
        proc.wait(timeout=10)


def worker_rss_mib(master_pid: int) -> list[float]:
    """Per worker, its own resident memory and its engine process's (a child of the worker)."""
    return [
        sum(p.memory_info().rss for p in [worker, *worker.children()]) / 2**20
        for worker in psutil.Process(master_pid).children()
    ]
