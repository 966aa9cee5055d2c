"""A real Prometheus scraping a real `qwen-chat serve`, a bounded mixed load, and the dashboard's queries.

Used by tests/test_monitoring.py. Run as a module to regenerate docs/dashboard.png from a few minutes of load:

    .venv/bin/python -m tests.support.monitoring_stack --minutes 4 --out docs/dashboard.png
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import itertools
import json
import math
import os
import re
import signal
import subprocess
import sys
import tempfile
import time
from collections import Counter
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import httpx
from websockets.exceptions import ConnectionClosed, InvalidStatus

from tests.support.live_server import free_port, wait_until
from tests.support.secret_volume import SecretVolume
from tests.support.serve_process import ServeProcess, serve_process
from tests.support.wsclient import open_socket, receive, until_end

REPO = Path(__file__).resolve().parents[2]
DASHBOARD = REPO / "charts" / "qwen-chat" / "dashboards" / "qwen-chat.json"
PREVIEW = REPO / "docs" / "dashboard_preview.py"
PROMETHEUS = "/usr/bin/prometheus"

# What the ServiceMonitor would give the series in Kubernetes: release `t` in namespace `test`.
RELEASE = "t"
NAMESPACE = "test"
JOB = "t-qwen-chat"  # the chart's full name for release `t`: the Service, hence Prometheus's job label
POD = "t-qwen-chat-6f9c7d8b5-k2x7q"
MODEL = "qwen-chat-tiny"
RATE_LIMIT = 5  # per user and minute; every load user sends fewer, the burst user more than twice as many
USER_CONNECTIONS = 2  # per user and worker; the capped user opens more than both workers take
SERVE_SETTINGS = {
    "rate_limit": f"{RATE_LIMIT}/minute",
    "max_running": "2",
    "served_model_name": MODEL,
    "credentials_reload_seconds": "1",
    "max_user_connections": str(USER_CONNECTIONS),  # and MAX_USER_REQUESTS is 1: half of MAX_RUNNING
}
_VARIABLE = re.compile(r"\$\{(\w+)(?::\w+)?\}|\[\[(\w+)\]\]|\$(\w+)")


class Prometheus:
    """Debian's prometheus server on 127.0.0.1, scraping one target every second; stopped by PID."""

    def __init__(self, workdir: Path, target_port: int) -> None:
        self.workdir = workdir
        self.port = free_port()
        self.url = f"http://127.0.0.1:{self.port}"
        self.config = workdir / "prometheus.yml"
        self.log = workdir / "prometheus.log"
        labels = {"namespace": NAMESPACE, "pod": POD, "service": JOB}
        config = {
            "global": {"scrape_interval": "1s", "scrape_timeout": "1s", "evaluation_interval": "1s"},
            "scrape_configs": [
                {
                    "job_name": JOB,
                    "metrics_path": "/metrics",
                    "static_configs": [{"targets": [f"127.0.0.1:{target_port}"], "labels": labels}],
                }
            ],
        }
        workdir.mkdir(parents=True, exist_ok=True)
        self.config.write_text(json.dumps(config, indent=2))  # JSON is YAML
        self.proc: subprocess.Popen[bytes] | None = None

    def start(self) -> None:
        assert os.path.exists(PROMETHEUS), "Debian's prometheus package provides it (make system-deps)"
        with self.log.open("wb") as out:
            self.proc = subprocess.Popen(
                [
                    PROMETHEUS,
                    f"--config.file={self.config}",
                    f"--storage.tsdb.path={self.workdir / 'tsdb'}",
                    f"--web.listen-address=127.0.0.1:{self.port}",
                    "--storage.tsdb.retention.time=1h",
                    "--log.level=warn",
                ],
                stdout=out,
                stderr=subprocess.STDOUT,
                start_new_session=True,
            )

    def stop(self) -> None:
        if self.proc is None or self.proc.poll() is not None:
            return
        with contextlib.suppress(ProcessLookupError):
            os.kill(self.proc.pid, signal.SIGTERM)
        try:
            self.proc.wait(timeout=15)
        except subprocess.TimeoutExpired:
            os.kill(self.proc.pid, signal.SIGKILL)
            self.proc.wait(timeout=10)

    def _ready(self) -> bool:
        assert self.proc is not None
        if self.proc.poll() is not None:
            raise AssertionError(f"prometheus exited: {self.log.read_text()[-2000:]}")
        with contextlib.suppress(httpx.HTTPError):
            return httpx.get(self.url + "/-/ready", timeout=2).status_code == 200
        return False

    def wait_ready(self, timeout: float = 30) -> None:
        wait_until(self._ready, timeout=timeout, interval=0.1)

    def api(self, path: str, **params: Any) -> Any:
        response = httpx.get(f"{self.url}/api/v1/{path}", params=params, timeout=10)
        body = response.json()
        if body.get("status") != "success":
            raise PromQLError(f"{params}: {body.get('errorType')}: {body.get('error')}")
        return body["data"]

    def query(self, expr: str, at: float | None = None) -> list[dict[str, Any]]:
        """An instant query; raises PromQLError when Prometheus refuses the expression."""
        params: dict[str, Any] = {"query": expr}
        if at is not None:
            params["time"] = at
        data = self.api("query", **params)
        assert data["resultType"] == "vector", data
        result: list[dict[str, Any]] = data["result"]
        return result

    def value(self, expr: str) -> float | None:
        result = self.query(expr)
        return sum(float(item["value"][1]) for item in result) if result else None

    def label_values(self, label: str, match: str) -> list[str]:
        values: list[str] = self.api(f"label/{label}/values", **{"match[]": match})
        return values

    def target_up(self) -> bool:
        return self.value(f'up{{job="{JOB}"}}') == 1.0

    def scrapes(self) -> float:
        """How many scrapes of the target Prometheus has stored: a clock that ticks once per scrape."""
        return self.value(f'count_over_time(up{{job="{JOB}"}}[1h])') or 0.0

    def wait_scrapes(self, count: int, timeout: float = 30) -> None:
        target = self.scrapes() + count
        wait_until(lambda: self.scrapes() >= target, timeout=timeout, interval=0.2)


class PromQLError(Exception):
    pass


@contextlib.contextmanager
def prometheus(workdir: Path, target_port: int) -> Iterator[Prometheus]:
    server = Prometheus(workdir, target_port)
    server.start()
    try:
        yield server
    finally:
        server.stop()


def finite(result: list[dict[str, Any]]) -> list[float]:
    return [v for v in (float(item["value"][1]) for item in result) if math.isfinite(v)]


# ---------------------------------------------------------------- the dashboard's queries


@dataclass(frozen=True)
class Target:
    panel: str
    ref: str
    expr: str

    def __str__(self) -> str:
        return f"{self.panel} [{self.ref}]"


def dashboard() -> dict[str, Any]:
    loaded: dict[str, Any] = json.loads(DASHBOARD.read_text())
    return loaded


def panels(board: dict[str, Any]) -> list[dict[str, Any]]:
    """Every panel that is not a row, the panels of collapsed rows included."""
    found = []
    for panel in board["panels"]:
        found.extend(panel.get("panels", []))
        if panel["type"] != "row":
            found.append(panel)
    return found


def targets(board: dict[str, Any]) -> list[Target]:
    return [Target(p["title"], t["refId"], t["expr"]) for p in panels(board) for t in p.get("targets", [])]


def substitute(expr: str, variables: dict[str, str]) -> str:
    """Grafana's variable syntaxes; a variable the test does not know is an error, not left in place."""

    def replace(match: re.Match[str]) -> str:
        name = next(group for group in match.groups() if group)
        if name not in variables:
            raise KeyError(f"no value for ${name} in {expr}")
        return variables[name]

    return _VARIABLE.sub(replace, expr)


def grafana_variables(rate_interval: str = "1m") -> dict[str, str]:
    return {"namespace": NAMESPACE, "pod": POD, "model": MODEL, "__rate_interval": rate_interval}


def variable_query(variable: dict[str, Any]) -> tuple[str, str]:
    """`label_values(selector, label)` of a Grafana query variable, as (selector, label)."""
    query = variable["query"]
    text = query["query"] if isinstance(query, dict) else query
    match = re.fullmatch(r"\s*label_values\((.+),\s*(\w+)\)\s*", text)
    assert match, f"variable {variable['name']}: not a label_values() query: {text}"
    return match.group(1), match.group(2)


# ---------------------------------------------------------------- the load


@dataclass
class LoadResult:
    finish_reasons: Counter[str] = field(default_factory=Counter)
    http_status: Counter[int] = field(default_factory=Counter)
    ws_errors: Counter[str] = field(default_factory=Counter)
    refused_handshakes: list[int] = field(default_factory=list)
    disconnects: int = 0
    capped_sockets: int = 0  # closed with 1013: the key had MAX_USER_CONNECTIONS open on that worker

    def add(self, other: LoadResult) -> None:
        self.finish_reasons.update(other.finish_reasons)
        self.http_status.update(other.http_status)
        self.ws_errors.update(other.ws_errors)
        self.refused_handshakes.extend(other.refused_handshakes)
        self.disconnects += other.disconnects
        self.capped_sockets += other.capped_sockets


class Users:
    """Many users, each with a key, so that the load stays under the per-user rate limit."""

    def __init__(self, count: int) -> None:
        self.keys = {f"user{n:03d}": f"monitoring-key-{n:03d}-0123456789abcdef" for n in range(count)}
        self._fresh = iter(self.keys.values())

    def next(self) -> str:
        try:
            return next(self._fresh)
        except StopIteration:
            raise AssertionError("the load ran out of fresh users: create more") from None


def _auth(key: str) -> dict[str, str]:
    return {"Authorization": f"Bearer {key}"}


async def _ws_chats(server: ServeProcess, key: str, sizes: list[int], result: LoadResult) -> None:
    async with open_socket(server.ws, user=None, additional_headers=_auth(key)) as ws:
        for size in sizes:
            await ws.send(
                json.dumps(
                    {"type": "chat", "content": "tell me about queues", "params": {"max_new_tokens": size}}
                )
            )
            end = (await until_end(ws, timeout=120))[-1]
            if end["type"] == "done":
                result.finish_reasons[end["finish_reason"]] += 1
            else:
                result.ws_errors[end["code"]] += 1


async def _ws_interrupted(server: ServeProcess, key: str, result: LoadResult, disconnect: bool) -> None:
    """A long greedy reply, then a cancel (or the client simply going away) once it streams."""
    async with open_socket(server.ws, user=None, additional_headers=_auth(key)) as ws:
        params = {"max_new_tokens": 400, "temperature": 0}
        await ws.send(json.dumps({"type": "chat", "content": "a long story", "params": params}))
        first = await receive(ws, timeout=120)
        if first["type"] == "error":
            result.ws_errors[first["code"]] += 1
            return
        assert first["type"] == "start", first
        assert (await receive(ws, timeout=120))["type"] == "token"
        if disconnect:
            result.disconnects += 1
            return  # leaving the block closes the socket mid-reply
        await ws.send(json.dumps({"type": "cancel"}))
        end = (await until_end(ws, timeout=120))[-1]
        result.finish_reasons[end.get("finish_reason", end.get("code", "?"))] += 1


async def _http_chats(http: httpx.AsyncClient, key: str, result: LoadResult) -> None:
    """The seeds' /chat and /chat_stream (sse), and /v1/chat/completions plain and streamed."""
    body = {"prompt": "hello", "max_new_tokens": 24}
    response = await http.post("/chat", headers=_auth(key), json=body)
    result.http_status[response.status_code] += 1
    async with http.stream("POST", "/chat_stream", headers=_auth(key), json=body) as stream:
        result.http_status[stream.status_code] += 1
        async for _ in stream.aiter_lines():
            pass


async def _openai_chats(http: httpx.AsyncClient, key: str, result: LoadResult) -> None:
    body: dict[str, Any] = {"model": MODEL, "messages": [{"role": "user", "content": "hi"}], "max_tokens": 24}
    response = await http.post("/v1/chat/completions", headers=_auth(key), json=body)
    result.http_status[response.status_code] += 1
    body.update(stream=True, stream_options={"include_usage": True})
    async with http.stream("POST", "/v1/chat/completions", headers=_auth(key), json=body) as stream:
        result.http_status[stream.status_code] += 1
        async for _ in stream.aiter_lines():
            pass


async def _bad_keys(server: ServeProcess, http: httpx.AsyncClient, result: LoadResult) -> None:
    try:
        async with open_socket(server.ws, user=None, additional_headers=_auth("not-a-key")):
            pass
    except InvalidStatus as refused:
        result.refused_handshakes.append(refused.response.status_code)
    response = await http.post(
        "/chat", headers=_auth("not-a-key"), json={"prompt": "hi", "max_new_tokens": 1}
    )
    result.http_status[response.status_code] += 1


async def _burst(http: httpx.AsyncClient, key: str, result: LoadResult) -> None:
    """More than twice the per-minute limit at once: whatever the window's phase, some are refused."""
    for _ in range(2 * RATE_LIMIT + 4):
        response = await http.post("/chat", headers=_auth(key), json={"prompt": "quick", "max_new_tokens": 1})
        result.http_status[response.status_code] += 1


async def _over_the_caps(server: ServeProcess, http: httpx.AsyncClient, key: str, result: LoadResult) -> None:
    """One key past its per-user caps on both workers: more sockets than two workers' MAX_USER_CONNECTIONS
    (some close with 1013), and more replies at once than two workers' MAX_USER_REQUESTS (some get 429)."""

    async def closed_at_once(ws: Any) -> bool:
        try:
            await asyncio.wait_for(ws.recv(), 0.5)
        except ConnectionClosed as closed:
            return closed.rcvd is not None and closed.rcvd.code == 1013
        except TimeoutError:
            pass
        return False

    async with contextlib.AsyncExitStack() as stack:
        sockets = [
            await stack.enter_async_context(open_socket(server.ws, user=None, additional_headers=_auth(key)))
            for _ in range(2 * USER_CONNECTIONS + 1)
        ]
        result.capped_sockets += sum(await asyncio.gather(*(closed_at_once(ws) for ws in sockets)))
    body = {"prompt": "a long story", "max_new_tokens": 48}
    replies = await asyncio.gather(*(http.post("/chat", headers=_auth(key), json=body) for _ in range(4)))
    for response in replies:
        result.http_status[response.status_code] += 1


async def load_round(server: ServeProcess, users: Users, streams: int = 4) -> LoadResult:
    """One bounded round of everything: WebSocket and HTTP chats, a cancel, a disconnect, bad keys, a burst,
    a key over its caps."""
    result = LoadResult()
    async with httpx.AsyncClient(base_url=server.http, timeout=120) as http:
        tasks = [_ws_chats(server, users.next(), [16, 48, 32], result) for _ in range(streams)]
        tasks += [
            _ws_interrupted(server, users.next(), result, disconnect=False),
            _ws_interrupted(server, users.next(), result, disconnect=True),
            _http_chats(http, users.next(), result),
            _openai_chats(http, users.next(), result),
            _bad_keys(server, http, result),
            _burst(http, users.next(), result),
            _over_the_caps(server, http, users.next(), result),
        ]
        await asyncio.wait_for(asyncio.gather(*tasks), timeout=240)
    return result


def credentials(root: Path, users: Users) -> Path:
    volume = SecretVolume(root)
    volume.write(users.keys)
    return volume.root


def kill_a_worker(server: ServeProcess) -> int:
    """SIGKILL one worker: the master counts the exit (qwen_chat_worker_exits_total) and starts another."""
    victim = server.workers()[0]
    os.kill(victim, signal.SIGKILL)
    return victim


# ---------------------------------------------------------------- docs/dashboard.png by hand


def run_preview(
    prom: Prometheus, out: Path, minutes: float, rate_interval: str = "1m"
) -> subprocess.CompletedProcess[str]:
    command = [
        sys.executable,
        str(PREVIEW),
        "--prometheus",
        prom.url,
        "--dashboard",
        str(DASHBOARD),
        "--out",
        str(out),
        "--var",
        f"namespace={NAMESPACE}",
        "--var",
        f"pod={POD}",
        "--var",
        f"model={MODEL}",
        "--minutes",
        str(minutes),
        "--rate-interval",
        rate_interval,
        "--require-data",
    ]
    return subprocess.run(command, capture_output=True, text=True, timeout=120, check=False, cwd=REPO)


def main() -> int:
    from qwen_chat.engine.tiny import make_tiny_model

    parser = argparse.ArgumentParser(
        description="Load a live service for a few minutes and draw the dashboard."
    )
    parser.add_argument("--minutes", type=float, default=4)
    parser.add_argument("--out", type=Path, default=REPO / "docs" / "dashboard.png")
    args = parser.parse_args()
    with tempfile.TemporaryDirectory(prefix="qwen-chat-dashboard-") as tmp_name:
        tmp = Path(tmp_name)
        model = make_tiny_model(tmp / "tiny-model")
        users = Users(2000)
        settings = {**SERVE_SETTINGS, "credentials_dir": str(credentials(tmp / "keys", users))}
        with (
            serve_process(tmp, model, workers=2, **settings) as server,
            prometheus(tmp / "prom", server.port) as prom,
        ):
            prom.wait_ready()
            server.wait_ready(timeout=300)
            start = time.monotonic()
            deadline = start + args.minutes * 60
            killed = False
            for round_number in itertools.count():
                if time.monotonic() > deadline:
                    break
                if not killed and time.monotonic() > start + args.minutes * 60 * 0.55:
                    print("killing a worker:", kill_a_worker(server), flush=True)
                    killed = True
                    wait_until(lambda: len(server.workers()) == 2, timeout=30)
                    server.wait_ready(timeout=300)
                streams = 2 + round_number % 5
                result = asyncio.run(load_round(server, users, streams=streams))
                print(
                    f"round {round_number}: {dict(result.finish_reasons)} {dict(result.http_status)}",
                    flush=True,
                )
                time.sleep(1 + round_number % 3)
            prom.wait_scrapes(3)
            done = run_preview(prom, args.out, minutes=args.minutes + 0.5)
            print(done.stdout + done.stderr)
            return done.returncode


if __name__ == "__main__":
    sys.exit(main())
