"""Start `qwen-chat serve` on 127.0.0.1 and stop it by process group: the one launcher of the repository.

`launch` is the launch itself (a free port, the environment, the process in a session of its own, and its
stop), shared by the benchmarks and the tests. `serve` is the benchmarks' use of it: the bench keys, and
ready (/readyz 200) when it yields. The tests' use of it is tests/support/serve_process.py: the tests'
keys in a Secret-like folder, JSON logs into a file, and the test waits for readiness itself (some expect
a server that never becomes ready). It lives here, not under tests/, so that a benchmark depends on no test
code; it needs nothing but httpx.
"""

from __future__ import annotations

import os
import signal
import socket
import subprocess
import sys
import time
from collections.abc import Iterator, Mapping
from contextlib import contextmanager, suppress
from dataclasses import dataclass
from pathlib import Path

import httpx

KEY = "bench-key-0123456789abcdef"
OTHER_KEY = "bench-other-key-fedcba9876543210"  # a second user, for bench/fairness.py


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


def spawn(command: list[str], env: dict[str, str], log: Path | None = None) -> subprocess.Popen[bytes]:
    """Start `command` in a session of its own (so that `stop` reaches all its processes), its output into
    `log` (stdout and stderr) or nowhere."""
    if log is None:
        return subprocess.Popen(
            command, env=env, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL, start_new_session=True
        )
    with log.open("wb") as out:
        return subprocess.Popen(
            command, env=env, stdout=out, stderr=subprocess.STDOUT, start_new_session=True
        )


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
    """SIGTERM the process group (started by `spawn`), SIGKILL it if the leader outlives `grace` seconds,
    then SIGKILL whatever is left of the group: a gunicorn master's workers are in its group, and none may
    outlive it."""
    if proc.poll() is None:
        with suppress(ProcessLookupError):
            os.killpg(proc.pid, signal.SIGTERM)
        try:
            proc.wait(timeout=grace)
        except subprocess.TimeoutExpired:
            os.killpg(proc.pid, signal.SIGKILL)
            proc.wait(timeout=10)
    with suppress(ProcessLookupError):
        os.killpg(proc.pid, signal.SIGKILL)


def serve_env(
    model: str,
    credentials: Path,
    port: int,
    settings: Mapping[str, object],
    environ: Mapping[str, str] | None = None,
    drop: tuple[str, ...] = ("OTEL_",),
) -> dict[str, str]:
    """This process's environment without the variables that start with `drop`, then `environ`, then the
    service on 127.0.0.1:`port` with `model` and `credentials`, then `settings` (QWEN_CHAT_<NAME>)."""
    env = {k: v for k, v in os.environ.items() if not k.startswith(drop)}
    env.update(environ or {})
    env.update(
        {
            "QWEN_CHAT_MODEL": model,
            "QWEN_CHAT_CREDENTIALS_DIR": str(credentials),
            "QWEN_CHAT_HOST": "127.0.0.1",
            "QWEN_CHAT_PORT": str(port),
        }
    )
    env.update({f"QWEN_CHAT_{name.upper()}": str(value) for name, value in settings.items()})
    return env


@dataclass
class Launched:
    """A `qwen-chat serve` (the gunicorn master) listening, or about to, on 127.0.0.1:`port`."""

    proc: subprocess.Popen[bytes]
    port: int
    started: float  # monotonic time of the launch

    @property
    def ws(self) -> str:
        return f"ws://127.0.0.1:{self.port}/ws"


@contextmanager
def launch(
    model: str,
    credentials: Path,
    settings: Mapping[str, object],
    *,
    environ: Mapping[str, str] | None = None,
    drop: tuple[str, ...] = ("OTEL_",),
    log: Path | None = None,
    grace: float = 120,
) -> Iterator[Launched]:
    """Start `qwen-chat serve` (the one next to this Python) on a free port with `serve_env`, yield at once
    (not waiting for readiness), and `stop` it afterwards with `grace` seconds to drain."""
    port = free_port()
    env = serve_env(model, credentials, port, settings, environ, drop)
    started = time.monotonic()
    proc = spawn([str(Path(sys.executable).with_name("qwen-chat")), "serve"], env, log)
    try:
        yield Launched(proc, port, started)
    finally:
        stop(proc, grace)


@dataclass
class Served(Launched):
    ready_seconds: float = 0.0


@contextmanager
def serve(
    model: str,
    work: Path,
    timeout: float = 600,
    environ: dict[str, str] | None = None,
    log: Path | None = None,
    **settings: object,
) -> Iterator[Served]:
    """Run the service with a bench key (`KEY`) and yield once /readyz is 200; out of the box but for
    `settings` and `environ` (traces stay off unless `environ` turns them on); its output into `log`, if
    given."""
    credentials = work / "credentials"
    credentials.mkdir(exist_ok=True)
    (credentials / "bench").write_text(KEY)
    (credentials / "other").write_text(OTHER_KEY)
    with launch(
        model, credentials, {"log_level": "warning", **settings}, environ=environ, log=log
    ) as launched:
        wait_ok(f"http://127.0.0.1:{launched.port}/readyz", launched.proc, timeout, "the service")
        yield Served(launched.proc, launched.port, launched.started, time.monotonic() - launched.started)
