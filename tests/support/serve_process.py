"""A real `qwen-chat serve` (gunicorn master plus uvicorn workers) started and stopped by a test."""

from __future__ import annotations

import json
import subprocess
from collections.abc import Iterator
from contextlib import AsyncExitStack, contextmanager, suppress
from pathlib import Path
from typing import Any

import httpx
import psutil
from bench.serving import launch
from prometheus_client.parser import text_string_to_metric_families
from websockets.asyncio.client import ClientConnection

from tests.support.live_server import Loopback, wait_until
from tests.support.secret_volume import KEYS, SecretVolume
from tests.support.wsclient import open_socket


class ServeProcess(Loopback):
    def __init__(self, proc: subprocess.Popen[bytes], port: int, log: Path) -> None:
        self.proc = proc
        self.port = port
        self.log = log

    def workers(self) -> list[int]:
        """The master's children but the pod's KV-event publisher (`runtime/kv_events.py`)."""
        workers = []
        with suppress(psutil.NoSuchProcess):
            for child in psutil.Process(self.proc.pid).children():
                with suppress(psutil.NoSuchProcess):
                    if "qwen_chat.runtime.kv_events" not in " ".join(child.cmdline()):
                        workers.append(child.pid)
        return sorted(workers)

    def engine_of(self, worker: int) -> int | None:
        """The pid of the worker's engine process (`engine/core/child.py`), while it has one."""
        with suppress(psutil.NoSuchProcess):
            for child in psutil.Process(worker).children():
                if "qwen_chat.engine.core.child" in " ".join(child.cmdline()):
                    return child.pid
        return None

    def worker_of(self, client_port: int) -> int | None:
        """Which worker holds the TCP connection whose client side is `client_port`."""
        for pid in self.workers():
            with suppress(psutil.NoSuchProcess):
                for conn in psutil.Process(pid).net_connections(kind="tcp"):
                    if conn.raddr and conn.raddr.port == client_port and conn.laddr.port == self.port:
                        return pid
        return None

    def readyz(self) -> tuple[int, dict[str, Any]]:
        try:
            response = httpx.get(self.http + "/readyz", timeout=5)
        except httpx.HTTPError:
            return 0, {}
        return response.status_code, response.json()

    def wait_ready(self, timeout: float = 120) -> None:
        wait_until(lambda: self.readyz()[0] == 200, timeout=timeout, interval=0.1)

    def metrics_text(self) -> str:
        return httpx.get(self.http + "/metrics", timeout=10).text

    def metric(self, name: str, **labels: str) -> float | None:
        """The sum of the samples called `name` whose labels include `labels`; None if there are none."""
        values = [
            sample.value
            for family in text_string_to_metric_families(self.metrics_text())
            for sample in family.samples
            if sample.name == name and all(sample.labels.get(k) == v for k, v in labels.items())
        ]
        return sum(values) if values else None

    def log_lines(self) -> list[str]:
        return [line for line in self.log.read_text().splitlines() if line.strip()]

    def assert_clean_logs(self, secrets: list[str]) -> None:
        """Every line is a JSON object, and no key or secret appears anywhere."""
        lines = self.log_lines()
        assert lines, "the service wrote no log lines"
        for line in lines:
            assert isinstance(json.loads(line), dict), line
            for secret in secrets:
                assert secret not in line, "a key reached the log"


@contextmanager
def serve_process(
    tmp_path: Path, model_dir: Path, workers: int = 2, environ: dict[str, str] | None = None, **settings: str
) -> Iterator[ServeProcess]:
    """Start `qwen-chat serve` on 127.0.0.1 with JSON logs into a file, through the one launcher
    (bench/serving.py); SIGKILL its group if it outlives the test. `environ` adds variables that are not
    settings (OTEL_*). It does not wait for readiness: tests call `wait_ready`, or watch it fail."""
    volume = SecretVolume(tmp_path / "credentials")
    volume.write(KEYS)
    defaults = {
        "device": "cpu",
        "workers": str(workers),
        "log_format": "json",
        "state_dir": str(tmp_path / "state"),
        "conversion_cache": str(tmp_path / "converted"),
    }
    log = tmp_path / "serve.log"
    with launch(
        str(model_dir),
        volume.root,
        {**defaults, **settings},
        environ={**(environ or {}), "HF_HUB_OFFLINE": "1", "PYTHONUNBUFFERED": "1"},
        drop=("QWEN_CHAT_", "PROMETHEUS_", "OTEL_"),
        log=log,
        grace=60,
    ) as launched:
        yield ServeProcess(launched.proc, launched.port, log)


async def open_on_every_worker(
    stack: AsyncExitStack, server: ServeProcess, per_worker: int = 1, limit: int = 40
) -> dict[int, list[ClientConnection]]:
    """Open sockets until each worker holds `per_worker` of them (the kernel picks the worker)."""
    held: dict[int, list[ClientConnection]] = {pid: [] for pid in server.workers()}
    for _ in range(limit):
        if all(len(sockets) >= per_worker for sockets in held.values()):
            return held
        ws = await stack.enter_async_context(open_socket(server.ws))
        pid = server.worker_of(ws.local_address[1])
        assert pid in held, "every socket is held by one of the workers"
        held[pid].append(ws)
    raise AssertionError(
        f"could not spread {limit} sockets over the workers: {[len(v) for v in held.values()]}"
    )
