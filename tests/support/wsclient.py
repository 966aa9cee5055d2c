"""A small real `websockets` client for the tests."""

from __future__ import annotations

import asyncio
import json
from typing import Any

from websockets.asyncio.client import ClientConnection, connect

from tests.support.secret_volume import KEYS


def bearer(user: str = "alice") -> dict[str, str]:
    return {"Authorization": f"Bearer {KEYS[user]}"}


def open_socket(url: str, user: str | None = "alice", **kwargs: Any) -> Any:
    headers = bearer(user) if user else {}
    headers.update(kwargs.pop("additional_headers", {}))
    return connect(url, additional_headers=headers, open_timeout=10, close_timeout=5, **kwargs)


async def receive(ws: ClientConnection, timeout: float = 30.0) -> dict[str, Any]:
    frame = await asyncio.wait_for(ws.recv(), timeout)
    message = json.loads(frame)
    assert isinstance(message, dict)
    return message


async def until_end(ws: ClientConnection, timeout: float = 60.0) -> list[dict[str, Any]]:
    """Receive frames up to and including the `done` or `error` that ends a chat."""
    frames = []
    while True:
        frame = await receive(ws, timeout)
        frames.append(frame)
        if frame["type"] in {"done", "error"}:
            return frames


async def chat(ws: ClientConnection, content: str = "hello there", **fields: Any) -> list[dict[str, Any]]:
    await ws.send(json.dumps({"type": "chat", "content": content, **fields}))
    return await until_end(ws)


def reply_text(frames: list[dict[str, Any]]) -> str:
    return "".join(f["text"] for f in frames if f["type"] == "token")
