"""`qwen-chat smoke-test`: one authenticated chat round trip against a running service (the `helm test` pod).

Waits for /readyz, checks that a wrong key is refused, then streams one short greedy reply over /ws and
checks the protocol: `start`, at least one `token`, then `done` with usage. Exit status 0 means it worked;
otherwise the last line says what failed. The key never appears in the output.
"""

from __future__ import annotations

import json
import secrets
import time
import urllib.error
import urllib.request
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from websockets.exceptions import InvalidStatus, WebSocketException
from websockets.sync.client import connect


class SmokeTestFailed(Exception):
    pass


@dataclass(frozen=True)
class Credential:
    user: str
    key: str


def first_credential(directory: Path) -> Credential:
    """The first user of a mounted Secret folder (kubelet's `..data` links and dotfiles skipped)."""
    try:
        names = sorted(path.name for path in directory.iterdir() if not path.name.startswith("."))
    except OSError as exc:
        raise SmokeTestFailed(f"cannot read credentials folder {directory}: {exc.strerror}") from exc
    for name in names:
        key = (directory / name).read_text().strip()
        if key:
            return Credential(name, key)
    raise SmokeTestFailed(f"no user with a key in {directory}")


def wait_ready(base_url: str, deadline: float) -> None:
    last = "no answer"
    while time.monotonic() < deadline:
        try:
            with urllib.request.urlopen(f"{base_url}/readyz", timeout=5) as response:
                if response.status == 200:
                    return
        except urllib.error.HTTPError as exc:
            last = f"HTTP {exc.code}"
        except OSError as exc:
            last = str(exc)
        time.sleep(1)
    raise SmokeTestFailed(f"{base_url}/readyz not ready in time ({last})")


def _ws_url(base_url: str) -> str:
    return base_url.replace("https://", "wss://", 1).replace("http://", "ws://", 1) + "/ws"


def check_wrong_key_refused(base_url: str) -> None:
    try:
        with connect(
            _ws_url(base_url),
            additional_headers={"Authorization": f"Bearer wrong-{secrets.token_hex(8)}"},
            open_timeout=10,
        ):
            pass
    except InvalidStatus as exc:
        if exc.response.status_code in (401, 403):
            return
        raise SmokeTestFailed(f"a wrong key got HTTP {exc.response.status_code}, not 401") from exc
    raise SmokeTestFailed("a wrong key opened /ws: authentication is not enforced")


def chat_round_trip(base_url: str, key: str | None, message: str, deadline: float) -> dict[str, Any]:
    headers = {"Authorization": f"Bearer {key}"} if key else {}
    request = {
        "type": "chat",
        "id": "smoke",
        "content": message,
        "params": {"max_new_tokens": 8, "temperature": 0},
    }
    seen: list[str] = []
    text = ""
    with connect(_ws_url(base_url), additional_headers=headers, open_timeout=10) as ws:
        ws.send(json.dumps(request))
        while True:
            remaining = deadline - time.monotonic()
            if remaining <= 0:
                raise SmokeTestFailed(f"no complete reply in time (got {seen})")
            frame = json.loads(ws.recv(timeout=remaining))
            seen.append(frame.get("type", "?"))
            if frame.get("id") != "smoke":
                raise SmokeTestFailed(f"frame without the request id: {frame}")
            if frame["type"] == "token":
                text += frame["text"]
            elif frame["type"] == "error":
                raise SmokeTestFailed(
                    f"the service answered an error: {frame.get('code')}: {frame.get('message')}"
                )
            elif frame["type"] == "done":
                break
    if seen[0] != "start" or "token" not in seen:
        raise SmokeTestFailed(f"unexpected frame sequence {seen}")
    return {"reply_chars": len(text), "usage": frame.get("usage"), "timing": frame.get("timing")}


def run(base_url: str, credentials_dir: Path | None, message: str, timeout: float) -> dict[str, Any]:
    deadline = time.monotonic() + timeout
    base_url = base_url.rstrip("/")
    credential = first_credential(credentials_dir) if credentials_dir else None
    wait_ready(base_url, deadline)
    if credential:
        check_wrong_key_refused(base_url)
    try:
        result = chat_round_trip(base_url, credential.key if credential else None, message, deadline)
    except TimeoutError as exc:
        raise SmokeTestFailed("no complete reply in time") from exc
    except InvalidStatus as exc:
        raise SmokeTestFailed(f"/ws refused the handshake: HTTP {exc.response.status_code}") from exc
    except (OSError, WebSocketException) as exc:
        raise SmokeTestFailed(f"/ws failed: {type(exc).__name__}: {exc}") from exc
    return {"ok": True, "url": base_url, "user": credential.user if credential else None, **result}
