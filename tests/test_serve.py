"""The README's run command, as a real process: `qwen-chat serve --dev` on a machine with no model hub."""

from __future__ import annotations

import json
import os
import re
import signal
import subprocess
import sys
import time
from pathlib import Path

import httpx
import pytest

from tests.support.live_server import free_port, wait_until
from tests.support.wsclient import until_end

pytestmark = pytest.mark.anyio


def _env(tmp_path: Path, **extra: str) -> dict[str, str]:
    env = {k: v for k, v in os.environ.items() if not k.startswith("QWEN_CHAT_")}
    env.update({"XDG_CACHE_HOME": str(tmp_path / "cache"), "HF_HUB_OFFLINE": "1", "PYTHONUNBUFFERED": "1"})
    env.update(extra)
    return env


def _qwen_chat() -> str:
    return str(Path(sys.executable).with_name("qwen-chat"))


async def test_dev_serve_falls_back_to_the_tiny_model_and_prints_a_working_key(tmp_path: Path) -> None:
    from websockets.asyncio.client import connect

    port = free_port()
    log = tmp_path / "serve.log"
    with log.open("w") as out:
        proc = subprocess.Popen(
            [_qwen_chat(), "serve", "--dev", "--port", str(port)],
            stdout=out,
            stderr=subprocess.STDOUT,
            env=_env(tmp_path, QWEN_CHAT_ALLOW_QUERY_AUTH="true"),
            start_new_session=True,
        )
    try:
        wait_until(lambda: "development key" in log.read_text(), timeout=120, interval=0.2)
        text = log.read_text()
        assert "TINY RANDOM TEST MODEL" in text
        assert f"http://127.0.0.1:{port}/" in text
        match = re.search(r"development key \(user 'dev', from [^)]+\): (\S+)", text)
        assert match, text
        key = match.group(1)
        wait_until(lambda: _get(f"http://127.0.0.1:{port}/readyz") == 200, timeout=120, interval=0.2)
        async with connect(
            f"ws://127.0.0.1:{port}/ws", additional_headers={"Authorization": f"Bearer {key}"}
        ) as ws:
            await ws.send(json.dumps({"type": "chat", "content": "hello", "params": {"max_new_tokens": 16}}))
            frames = await until_end(ws)
        assert frames[-1]["type"] == "done", frames[-1]
        assert sum(1 for f in frames if f["type"] == "token") > 1
        # Seed-style query auth, when enabled, must not leak the secret through uvicorn's access lines.
        async with connect(f"ws://127.0.0.1:{port}/ws?userid=dev&secret={key}") as ws:
            await ws.send("hi")
            assert (await until_end(ws))[-1]["type"] == "done"
        wait_until(lambda: "secret=[redacted]" in log.read_text(), timeout=10)
        # The key is printed once for the developer, and never logged.
        assert log.read_text().count(key) == 1
    finally:
        os.killpg(proc.pid, signal.SIGTERM)
        code = proc.wait(timeout=60)
    assert code == 0


def test_invalid_configuration_is_one_clear_error(tmp_path: Path) -> None:
    started = time.monotonic()
    result = subprocess.run(
        [_qwen_chat(), "serve"],
        capture_output=True,
        text=True,
        timeout=60,
        env=_env(tmp_path, QWEN_CHAT_TEMPERATURE="hot"),
    )
    assert result.returncode == 2
    assert "invalid configuration" in result.stderr and "temperature" in result.stderr
    assert "Traceback" not in result.stderr
    assert time.monotonic() - started < 30


def _get(url: str) -> int:
    try:
        return httpx.get(url, timeout=2).status_code
    except httpx.HTTPError:
        return 0
