"""A deliberately naive WebSocket client on a raw TCP socket, for frames no well-behaved library sends:
text that is not UTF-8, data after a close frame, reserved opcodes and bits, unmasked or fragmented
frames, oversized control frames. RFC 6455 section 5."""

from __future__ import annotations

import asyncio
import base64
import contextlib
import json
import os
import struct
from dataclasses import dataclass
from typing import Any

TEXT, BINARY, CLOSE, PING, PONG, CONTINUATION = 0x1, 0x2, 0x8, 0x9, 0xA, 0x0


def encode_frame(
    opcode: int, payload: bytes, *, fin: bool = True, masked: bool = True, rsv: int = 0
) -> bytes:
    first = (0x80 if fin else 0) | (rsv & 0x7) << 4 | opcode
    length = len(payload)
    mask_bit = 0x80 if masked else 0
    if length < 126:
        header = struct.pack("!BB", first, mask_bit | length)
    elif length < 1 << 16:
        header = struct.pack("!BBH", first, mask_bit | 126, length)
    else:
        header = struct.pack("!BBQ", first, mask_bit | 127, length)
    if not masked:
        return header + payload
    key = os.urandom(4)
    return header + key + bytes(b ^ key[i % 4] for i, b in enumerate(payload))


def close_payload(code: int, reason: str = "") -> bytes:
    return struct.pack("!H", code) + reason.encode()


@dataclass
class Frame:
    opcode: int
    payload: bytes

    @property
    def close_code(self) -> int | None:
        return struct.unpack("!H", self.payload[:2])[0] if len(self.payload) >= 2 else None

    def json(self) -> Any:
        return json.loads(self.payload)


class RawSocket:
    def __init__(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        self.reader = reader
        self.writer = writer

    async def send_raw(self, data: bytes) -> None:
        self.writer.write(data)
        await self.writer.drain()

    async def send(self, opcode: int, payload: bytes, **kwargs: Any) -> None:
        await self.send_raw(encode_frame(opcode, payload, **kwargs))

    async def receive(self, timeout: float = 30.0) -> Frame | None:
        """The next frame from the server (pings are answered and skipped); None when the TCP stream ends."""
        while True:
            try:
                head = await asyncio.wait_for(self.reader.readexactly(2), timeout)
            except asyncio.IncompleteReadError:
                return None
            opcode, length = head[0] & 0x0F, head[1] & 0x7F
            if length == 126:
                (length,) = struct.unpack("!H", await self.reader.readexactly(2))
            elif length == 127:
                (length,) = struct.unpack("!Q", await self.reader.readexactly(8))
            payload = await asyncio.wait_for(self.reader.readexactly(length), timeout)
            if opcode == PING:
                with contextlib.suppress(ConnectionError):
                    await self.send(PONG, payload)
                continue
            return Frame(opcode, payload)

    async def close(self) -> None:
        self.writer.close()
        with contextlib.suppress(Exception):
            await self.writer.wait_closed()


async def open_raw(
    host: str, port: int, key: str | None, extra_headers: dict[str, str] | None = None
) -> tuple[int, RawSocket]:
    """Handshake on /ws; returns the HTTP status and the socket (open only when the status is 101)."""
    reader, writer = await asyncio.wait_for(asyncio.open_connection(host, port), 10)
    headers = {
        "Host": f"{host}:{port}",
        "Upgrade": "websocket",
        "Connection": "Upgrade",
        "Sec-WebSocket-Key": base64.b64encode(os.urandom(16)).decode(),
        "Sec-WebSocket-Version": "13",
        **({"Authorization": f"Bearer {key}"} if key else {}),
        **(extra_headers or {}),
    }
    request = "GET /ws HTTP/1.1\r\n" + "".join(f"{k}: {v}\r\n" for k, v in headers.items()) + "\r\n"
    writer.write(request.encode())
    await writer.drain()
    response = await asyncio.wait_for(reader.readuntil(b"\r\n\r\n"), 10)
    status = int(response.split(b" ", 2)[1])
    return status, RawSocket(reader, writer)
