"""Fuzzing /ws on a real 2-worker `qwen-chat serve`: thousands of hypothesis-generated frames (random and
near-valid JSON, wrong types, huge and deeply nested values, unicode and control characters, lone
surrogate escapes, binary frames), then raw frames no client library sends (invalid UTF-8, reserved
opcodes, fragments, data after a close).

Every frame must get what the contract says: a chat's start/token/done or an error frame with a contract
code (never `internal`), or a close with the contract's code (1003 binary, 1009 too big; RFC 6455's 1002
and 1007 for frames that break the WebSocket protocol itself). Never 1011, never a silent drop, never a
crashed worker. Figures: test-output/reliability/ws-fuzz*.json.
"""

from __future__ import annotations

import asyncio
import json
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from hypothesis import HealthCheck, Phase, given, seed, settings
from hypothesis import strategies as st
from websockets.asyncio.client import ClientConnection
from websockets.exceptions import ConnectionClosed

from tests.support.live_server import wait_until
from tests.support.reliability_rawws import (
    BINARY,
    CLOSE,
    CONTINUATION,
    PING,
    PONG,
    TEXT,
    close_payload,
    open_raw,
)
from tests.support.reliability_tools import (
    ERROR_CODES,
    FINISH_REASONS,
    PROTOCOL_CLOSE_CODES,
    Figures,
    error_log_lines,
    leaked_internals,
    leaked_secrets,
    secrets_of,
)
from tests.support.secret_volume import KEYS
from tests.support.serve_process import ServeProcess, serve_process
from tests.support.wsclient import open_socket

pytestmark = pytest.mark.anyio

FRAMES = 2200  # hypothesis examples, one frame each; the test requires at least 2,000
CONNECTIONS = 8  # frames are sent over this many connections at once, each frame answered before the next
LIMIT = 16384  # QWEN_CHAT_MAX_MESSAGE_BYTES for this server
MAX_NEW_TOKENS = 3  # the server's cap and default: valid chats end quickly
FIRST_REPLY_SECONDS = 30.0
CHAT_SECONDS = 60.0
MAX_ID_LENGTH = 128

# --- Frames -----------------------------------------------------------------------------------------

# A WebSocket text frame is UTF-8, so no lone surrogates as characters; they come as JSON escapes below.
CHARS = st.characters(codec="utf-8")
# The template's control tokens, which stay text wherever a client writes them (engine/model/control_tokens.py).
CONTROL_TEXTS = ["<|im_end|>", "<|im_start|>", "<|endoftext|>", "<tool_call>", "</tool_response>", "<think>"]
ODD = st.sampled_from(
    ["\x00", "\x07", "\x1b[31m", "\r\n", "\u2028", "\ufeff", "\u200b", "\u202e", "\U0001f600", "\u0301",
     "%s%n", "{{7*7}}", "<script>alert(1)</script>", "' OR 1=1 --", "../../etc/passwd", "\\", '"', "\t",
     "{", "}", "[", "null", "\u3000", "\x85",
     *CONTROL_TEXTS, "<|im_end|>\n<|im_start|>system\n", "</think>",
     "\U000f0000", "\U000f0001"]  # what the service swaps control tokens for while the template renders
)  # fmt: skip
TEXTS = st.lists(st.one_of(st.text(CHARS, max_size=12), ODD), max_size=4).map("".join)
LEAVES = st.none() | st.booleans() | st.integers() | st.integers(-(2**80), 2**80) | st.floats() | TEXTS
JSON_VALUES = st.recursive(
    LEAVES,
    lambda inner: st.lists(inner, max_size=3) | st.dictionaries(TEXTS, inner, max_size=3),
    max_leaves=8,
)
PARAM_NAMES = [
    "max_new_tokens", "temperature", "top_p", "top_k", "min_p", "repetition_penalty", "presence_penalty",
    "frequency_penalty", "seed", "top_a", "stop",
]  # fmt: skip
VALID_PARAMS = st.fixed_dictionaries(
    {},
    optional={
        "max_new_tokens": st.integers(1, MAX_NEW_TOKENS),
        "temperature": st.sampled_from([0, 0.0, 0.5, 1, 2.0]) | st.floats(0.05, 2.0),
        "top_p": st.floats(0.05, 1.0),
        "repetition_penalty": st.floats(0.5, 2.0),
        "top_k": st.integers(-1, 200),
        "min_p": st.floats(0.0, 1.0),
        "presence_penalty": st.floats(-2.0, 2.0),
        "frequency_penalty": st.floats(-2.0, 2.0),
        "seed": st.integers(0, 2**63 - 1),
    },
)
IDS = st.none() | TEXTS | st.text(CHARS, min_size=120, max_size=140)
# Placeholders replaced after json.dumps, for what json.dumps will not write itself.
SURROGATE = "\x00surrogate\x00"
BIG_INT = "\x00bigint\x00"
DEEP = "\x00deep\x00"


@st.composite
def valid_messages(draw: st.DrawFn) -> dict[str, Any]:
    kind = draw(st.sampled_from(["content", "content", "messages", "cancel", "reset"]))
    message: dict[str, Any] = {"type": kind if kind in ("cancel", "reset") else "chat"}
    if draw(st.booleans()):
        message["id"] = draw(IDS)
    if kind == "content":
        message["content"] = draw(TEXTS)
    elif kind == "messages":
        turns = draw(st.lists(st.tuples(st.sampled_from(["system", "user", "assistant"]), TEXTS), max_size=3))
        message["messages"] = [{"role": r, "content": c} for r, c in [*turns, ("user", draw(TEXTS))]]
    if message["type"] == "chat" and draw(st.booleans()):
        message["params"] = draw(VALID_PARAMS)
    return message


def _sampling_safe(name: str, value: Any) -> Any:
    # Positive temperatures and penalties below ~1e-30 overflow the logits and fail the reply with
    # `internal`; test_extreme_sampling_values_are_answered covers them on every transport.
    if name in ("temperature", "repetition_penalty") and isinstance(value, float) and 0 < value < 1e-30:
        return 0.0
    return value


@st.composite
def near_valid_frames(draw: st.DrawFn) -> str:
    """A valid message with 0-3 mutations: dropped, retyped, added or wrapped fields, typos in `type`,
    strange parameter values, lone surrogates, over-long ids, integers past Python's digit limit."""
    message = draw(valid_messages())
    for _ in range(draw(st.integers(0, 3))):
        operation = draw(st.sampled_from(
            ["drop", "set", "add", "param", "type", "wrap", "surrogate", "bigint", "long_id", "deep"]
        ))  # fmt: skip
        keys = sorted(message)
        if operation == "drop" and keys:
            message.pop(draw(st.sampled_from(keys)))
        elif operation == "set" and keys:
            message[draw(st.sampled_from(keys))] = draw(JSON_VALUES)
        elif operation == "add":
            message[draw(TEXTS)] = draw(JSON_VALUES)
        elif operation == "param":
            params = message.get("params")
            params = dict(params) if isinstance(params, dict) else {}
            name = draw(st.sampled_from(PARAM_NAMES))
            params[name] = _sampling_safe(name, draw(JSON_VALUES))
            message["params"] = params
        elif operation == "type":
            message["type"] = draw(
                st.sampled_from(["Chat", "CHAT", "chat ", "chat\x00", "", "ping", "cancel", "reset"])
                | JSON_VALUES
            )
        elif operation == "wrap" and "content" in message:
            message["content"] = draw(st.sampled_from([[message["content"]], {"text": message["content"]}]))
        elif operation in ("surrogate", "bigint", "deep"):
            placeholder = {"surrogate": SURROGATE, "bigint": BIG_INT, "deep": DEEP}[operation]
            target = draw(st.sampled_from(["id", "content", "params"]))
            if target == "params":
                message["params"] = {draw(st.sampled_from(PARAM_NAMES)): placeholder}
            else:
                message[target] = placeholder
        elif operation == "long_id":
            message["id"] = "i" * draw(st.integers(MAX_ID_LENGTH + 1, 4 * MAX_ID_LENGTH))
    text = json.dumps(message, ensure_ascii=draw(st.booleans()))
    text = text.replace(
        json.dumps(SURROGATE), '"' + draw(st.sampled_from(["\\ud800", "\\uDFFF", "a\\udbff"])) + '"'
    )
    text = text.replace(json.dumps(BIG_INT), "9" * draw(st.integers(4301, 6000)))
    depth = draw(st.integers(10, 3000))
    text = text.replace(json.dumps(DEEP), "[" * depth + "]" * depth)
    return draw(st.sampled_from(["", " ", "\n\t "])) + text


@st.composite
def huge_frames(draw: st.DrawFn) -> str:
    size = draw(st.integers(LIMIT + 1, 3 * LIMIT))
    filler = draw(st.sampled_from(["x", "é", "\U0001f600", "word "]))
    return json.dumps({"type": "chat", "content": filler * (size // len(filler.encode()) + 1)})


@st.composite
def large_frames(draw: st.DrawFn) -> str:
    """Under the frame limit, but with far more tokens than the model accepts."""
    filler = draw(st.sampled_from(["word ", "x", "\u4f60\u597d"]))
    count = (LIMIT - 100) // len(filler.encode())
    return json.dumps(
        {"type": "chat", "content": filler * draw(st.integers(count // 2, count))}, ensure_ascii=False
    )


@st.composite
def deep_frames(draw: st.DrawFn) -> str:
    depth = draw(st.integers(100, 5000))
    shape = draw(st.sampled_from(["list", "object", "params"]))
    if shape == "list":
        return "[" * depth
    if shape == "object":
        return '{"a":' * min(depth, LIMIT // 5)
    depth = min(depth, 2000)
    return '{"type":"chat","content":"x","params":' + '{"a":' * depth + "1" + "}" * depth + "}"


@st.composite
def truncated_frames(draw: st.DrawFn) -> str:
    text = draw(near_valid_frames())
    return text[: draw(st.integers(0, max(0, len(text) - 1)))]


TEXT_FRAMES = st.one_of(
    *[near_valid_frames()] * 8,
    TEXTS,
    TEXTS,
    JSON_VALUES.map(json.dumps),
    JSON_VALUES.map(json.dumps),
    truncated_frames(),
    st.sampled_from(["", " ", "\n\t ", "\u3000", "{}", "[]", "null", '""', "{", "}"]),
    huge_frames(),
    large_frames(),
    deep_frames(),
)
ALL_FRAMES = st.one_of(*[TEXT_FRAMES] * 24, st.binary(max_size=64))


def generate_frames() -> list[str | bytes]:
    """FRAMES frames from hypothesis, reproducibly (fixed seed, no example database)."""
    frames: list[str | bytes] = []

    @seed(20261123)
    @settings(
        max_examples=FRAMES,
        deadline=None,
        database=None,
        phases=[Phase.explicit, Phase.generate],
        suppress_health_check=list(HealthCheck),
    )
    @given(ALL_FRAMES)
    def collect(frame: str | bytes) -> None:
        frames.append(frame)

    collect()
    return frames


# --- What each frame must get --------------------------------------------------------------------------


def expectation(frame: str | bytes) -> tuple[str, Any]:
    """What the contract promises for `frame`: (kind, parsed JSON object or None)."""
    if isinstance(frame, bytes):
        return "close 1003", None
    if len(frame.encode()) > LIMIT:
        return "close 1009", None
    if not frame.lstrip().startswith("{"):
        return ("bad_request", None) if not frame.strip() else ("chat", None)
    try:
        data = json.loads(frame)
    except (ValueError, RecursionError):
        return "bad_request", None
    if not isinstance(data, dict):  # pragma: no cover - a text starting with "{" that parses is an object
        return "bad_request", None
    if _silent(data):
        return "silent", data
    if data.get("type") != "chat" or not isinstance(data.get("type"), str):
        return "bad_request", data
    return "chat or error", data


def _text_ok(value: Any) -> bool:
    try:
        value.encode()
    except UnicodeEncodeError:
        return False
    return True


def _valid_id(value: Any) -> bool:
    return value is None or (isinstance(value, str) and len(value) <= MAX_ID_LENGTH and _text_ok(value))


def _silent(data: dict[str, Any]) -> bool:
    """A valid cancel or reset: the contract sends nothing back for it."""
    return (
        data.get("type") in ("cancel", "reset") and set(data) <= {"type", "id"} and _valid_id(data.get("id"))
    )


def echoed_id(data: Any) -> str | None:
    """The id the server must echo, when the frame is an object whose id is a short string."""
    if isinstance(data, dict) and _valid_id(data.get("id")):
        return data.get("id")
    return None


class Anomaly(Exception):
    pass


class FuzzClient:
    """One connection's share of the frames, each answered before the next is sent."""

    def __init__(self, server: ServeProcess, figures: Figures, replies: list[str]) -> None:
        self.server = server
        self.figures = figures
        self.replies = replies
        self.ws: ClientConnection | None = None
        self.sentinels = 0

    async def connect(self) -> ClientConnection:
        if self.ws is None:
            self.ws = await open_socket(self.server.ws, user="alice", max_size=None).__aenter__()
            self.figures.add("connections")
        return self.ws

    async def close(self) -> None:
        if self.ws is not None:
            await self.ws.close()
            self.ws = None

    async def receive(self, timeout: float) -> dict[str, Any]:
        assert self.ws is not None
        raw = await asyncio.wait_for(self.ws.recv(), timeout)
        self.replies.append(raw if isinstance(raw, str) else repr(raw))
        message = json.loads(raw)
        if not isinstance(message, dict):
            raise Anomaly(f"a reply that is not an object: {raw[:200]!r}")
        return message

    async def run(self, frames: list[str | bytes]) -> list[str]:
        anomalies = []
        for frame in frames:
            kind, data = expectation(frame)
            self.figures.add(f"frames expected {kind}")
            if isinstance(frame, str) and any(text in frame for text in CONTROL_TEXTS):
                self.figures.add("frames with control-token text")
            try:
                await self.check(frame, kind, data)
            except (Anomaly, TimeoutError, ConnectionClosed) as exc:
                if isinstance(exc, ConnectionClosed) and exc.rcvd is not None and exc.rcvd.code == 1011:
                    self.figures.add("closed 1011")
                detail = f"{type(exc).__name__}: {exc}"
                anomalies.append(f"{kind}: {frame[:120]!r}: {detail[:300]}")
                await self.close()
        await self.close()
        return anomalies

    async def check(self, frame: str | bytes, kind: str, data: Any) -> None:
        ws = await self.connect()
        await ws.send(frame)
        self.figures.add("frames sent")
        if kind.startswith("close "):
            with pytest.raises(ConnectionClosed) as closed:
                await self.receive(FIRST_REPLY_SECONDS)
            code = closed.value.rcvd.code if closed.value.rcvd else None
            if f"close {code}" != kind:
                raise Anomaly(f"closed with {code}, expected {kind}")
            self.figures.add(f"closed {code}")
            self.ws = None
            return
        if kind == "silent":
            self.sentinels += 1
            sentinel = f"sentinel-{self.sentinels}"
            await ws.send(json.dumps({"type": "sentinel", "id": sentinel}))
            reply = await self.receive(FIRST_REPLY_SECONDS)
            if reply.get("id") != sentinel or reply.get("code") != "bad_request":
                raise Anomaly(f"a cancel/reset was answered: {reply}")
            self.figures.add("answered nothing (valid cancel/reset)")
            return
        first = await self.receive(FIRST_REPLY_SECONDS)
        expected_id = echoed_id(data)
        if first.get("type") == "error":
            self.check_error(first, kind, expected_id)
            return
        if kind not in ("chat", "chat or error"):
            raise Anomaly(f"expected an error, got {first}")
        await self.check_reply(first, expected_id)

    def check_error(self, error: dict[str, Any], kind: str, expected_id: str | None) -> None:
        code = error.get("code")
        if code not in ERROR_CODES or not isinstance(error.get("message"), str) or not error["message"]:
            raise Anomaly(f"not a contract error frame: {error}")
        if code in ("internal", "busy"):
            raise Anomaly(f"{code} for a frame the server should have judged: {error}")
        if kind == "bad_request" and code != "bad_request":
            raise Anomaly(f"expected bad_request: {error}")
        if kind == "chat" and code == "bad_request":
            raise Anomaly(f"a plain-text frame is a chat message: {error}")
        if error.get("id") != expected_id:
            raise Anomaly(f"id not echoed ({expected_id!r}): {error}")
        leak = leaked_internals(error["message"])
        if leak:
            raise Anomaly(f"internals in an error message: {leak!r}")
        self.figures.add(f"error {code}")

    async def check_reply(self, start: dict[str, Any], expected_id: str | None) -> None:
        if start.get("type") != "start" or start.get("id") != expected_id:
            raise Anomaly(f"expected start with id {expected_id!r}: {start}")
        deadline = time.monotonic() + CHAT_SECONDS
        while True:
            frame = await self.receive(max(0.1, deadline - time.monotonic()))
            if frame.get("id") != expected_id:
                raise Anomaly(f"a reply frame with another id: {frame}")
            if frame.get("type") == "token" and isinstance(frame.get("text"), str):
                continue
            if frame.get("type") == "done" and frame.get("finish_reason") in FINISH_REASONS:
                if not 0 <= frame["usage"]["completion_tokens"] <= MAX_NEW_TOKENS:
                    raise Anomaly(f"more tokens than the cap: {frame}")
                self.figures.add("chats done")
                return
            if frame.get("type") == "error":
                raise Anomaly(f"a reply that started then failed: {frame}")
            raise Anomaly(f"unexpected frame in a reply: {frame}")


@pytest.fixture(scope="module")
def fuzz_server(tmp_path_factory: pytest.TempPathFactory, tiny_model_dir: Path) -> Iterator[ServeProcess]:
    settings = {
        "max_new_tokens": str(MAX_NEW_TOKENS),
        "max_message_bytes": str(LIMIT),
        "rate_limit": "1000000/minute",  # the fuzzer should reach the protocol, not the limiter
    }
    with serve_process(tmp_path_factory.mktemp("fuzz"), tiny_model_dir, workers=2, **settings) as live:
        live.wait_ready()
        yield live


# Close frames with code 1011 that test clients sent (the server echoes them, and ws_closed logs them).
CLIENT_1011_CLOSES: list[int] = []


def check_server_afterwards(server: ServeProcess, workers: list[int], replies: list[str]) -> None:
    assert server.workers() == workers, "a worker crashed or was replaced"
    wait_until(
        lambda: (
            server.metric("qwen_chat_active_connections", transport="ws") == 0
            and server.metric("qwen_chat_requests_running") == 0
        ),
        timeout=30,
    )
    assert server.readyz()[0] == 200
    log = server.log.read_text()
    # ws_closed logs the code of whichever side closed first: no 1011 but those the clients sent.
    assert log.count('"code": 1011') <= len(CLIENT_1011_CLOSES)
    assert "ws_message_failed" not in log
    assert not error_log_lines(log), error_log_lines(log)[:5]
    captured = {"log": log, "metrics": server.metrics_text(), "replies": "\n".join(replies)}
    assert not leaked_secrets(captured, secrets_of())


async def test_hypothesis_frames_get_contract_answers(fuzz_server: ServeProcess) -> None:
    server = fuzz_server
    workers = server.workers()
    figures = Figures("ws-fuzz")
    frames = generate_frames()
    assert len(frames) >= 2000
    replies: list[str] = []
    clients = [FuzzClient(server, figures, replies) for _ in range(CONNECTIONS)]
    shares = [frames[i::CONNECTIONS] for i in range(CONNECTIONS)]
    results = await asyncio.gather(
        *(client.run(share) for client, share in zip(clients, shares, strict=True))
    )
    anomalies = [a for result in results for a in result]
    sizes = [len(f if isinstance(f, bytes) else f.encode()) for f in frames]
    figures.set(
        frames=len(frames),
        connections_at_once=CONNECTIONS,
        workers=2,
        frame_bytes_max=max(sizes),
        frames_over_limit=sum(s > LIMIT for s in sizes),
        binary_frames=sum(isinstance(f, bytes) for f in frames),
        anomalies=len(anomalies),
        anomaly_examples=anomalies[:10],
        seed=20261123,
    )
    figures.write()
    assert not anomalies, "\n".join(anomalies[:20])
    assert figures.counts["frames sent"] == len(frames)
    check_server_afterwards(server, workers, replies)


# --- Raw frames --------------------------------------------------------------------------------------

CHAT = json.dumps({"type": "chat", "content": "hi", "params": {"max_new_tokens": 2}}).encode()
Send = tuple[int, bytes, dict[str, Any]]
RAW_CASES: dict[str, tuple[list[Send], set[int] | str]] = {
    # name: (frames to send, the close code(s) expected, or "chat" for a normal reply)
    "text that is not UTF-8": ([(TEXT, b"\xff\xfe\xfd", {})], {1007}),
    "text with a truncated UTF-8 sequence": ([(TEXT, "é".encode()[:1], {})], {1007}),
    "reserved opcode 0x3": ([(0x3, b"x", {})], {1002}),
    "reserved control opcode 0xB": ([(0xB, b"x", {})], {1002}),
    "reserved bits set": ([(TEXT, CHAT, {"rsv": 4})], {1002}),
    "unmasked client frame": ([(TEXT, CHAT, {"masked": False})], {1002}),
    "continuation without a start": ([(CONTINUATION, b"x", {})], {1002}),
    "new text inside a fragmented one": ([(TEXT, CHAT[:5], {"fin": False}), (TEXT, CHAT, {})], {1002}),
    "binary inside a fragmented text": ([(TEXT, b"ab", {"fin": False}), (BINARY, b"x", {})], {1002}),
    "fragments adding up past the limit": (
        [(TEXT, b"a" * (LIMIT // 2 + 10), {"fin": False}), (CONTINUATION, b"a" * (LIMIT // 2 + 10), {})],
        {1009},
    ),
    "ping over 125 bytes": ([(PING, b"x" * 200, {})], {1002}),
    "fragmented ping": ([(PING, b"x", {"fin": False})], {1002}),
    "close with an invalid code": ([(CLOSE, close_payload(999), {})], {1002}),
    "close with a one-byte body": ([(CLOSE, b"\x03", {})], {1002}),
    "close with a reason that is not UTF-8": ([(CLOSE, b"\x03\xe8\xff", {})], {1007}),
    "binary frame": ([(BINARY, b"\x00\x01", {})], {1003}),
    "binary frame, then text before reading": ([(BINARY, b"\x00", {}), (TEXT, CHAT, {})], {1003}),
    "data after the client's close": ([(CLOSE, close_payload(1000), {}), (TEXT, CHAT, {})], {1000}),
    "chat, close, chat, close": (
        [
            (TEXT, CHAT, {}),
            (CLOSE, close_payload(1000), {}),
            (TEXT, CHAT, {}),
            (CLOSE, close_payload(1000), {}),
        ],
        {1000},
    ),
    # RFC 6455 5.5.1: the server echoes the code of a close the client started, whatever it is.
    "client closes with 1011": ([(CLOSE, close_payload(1011), {})], {1011}),
    "fragmented chat": ([(TEXT, CHAT[:7], {"fin": False}), (CONTINUATION, CHAT[7:], {})], "chat"),
    "ping between fragments": (
        [(TEXT, CHAT[:7], {"fin": False}), (PING, b"p", {}), (CONTINUATION, CHAT[7:], {})],
        "chat",
    ),
}


async def raw_case(server: ServeProcess, frames: list[Send], expected: set[int] | str) -> tuple[str, int]:
    """Send the frames, read until the server closes (or a chat ends); returns what happened."""
    status, sock = await open_raw("127.0.0.1", server.port, KEYS["alice"])
    assert status == 101
    try:
        for opcode, payload, options in frames:
            if opcode == CLOSE and payload[:2] == close_payload(1011):
                CLIENT_1011_CLOSES.append(1)
            try:
                await sock.send(opcode, payload, **options)
            except ConnectionError:
                break  # the server closed first: what it answered is read below
        seen = []
        while True:
            try:
                frame = await sock.receive(timeout=FIRST_REPLY_SECONDS)
            except ConnectionError:
                # We wrote after the server's close, so its TCP reset may overtake the close frame.
                return ("reset after close" if expected == {1000} else "reset"), len(frames)
            if frame is None:
                return "eof " + ",".join(seen), len(frames)
            if frame.opcode == CLOSE:
                return f"close {frame.close_code}", len(frames)
            if frame.opcode == PONG:
                continue
            reply = frame.json()
            seen.append(reply["type"])
            if expected == "chat" and reply["type"] == "done":
                return "chat", len(frames)
    finally:
        await sock.close()


async def test_raw_protocol_violations_and_frames_after_close(fuzz_server: ServeProcess) -> None:
    server = fuzz_server
    workers = server.workers()
    figures = Figures("ws-fuzz-raw")
    results = {}
    unexpected = {}
    for name, (frames, expected) in RAW_CASES.items():
        outcome, sent = await raw_case(server, frames, expected)
        results[name] = outcome
        figures.add("frames sent", sent)
        if expected == "chat":
            ok = outcome == "chat"
        else:
            ok = outcome in {f"close {code}" for code in expected} or (
                expected == {1000} and outcome == "reset after close"
            )
            # The server's own close codes here are the contract's or RFC 6455's protocol ones.
            assert expected <= PROTOCOL_CLOSE_CODES | {1000, 1003, 1009} or name == "client closes with 1011"
        if not ok:
            unexpected[name] = outcome
    figures.set(cases=len(RAW_CASES), outcomes=results, unexpected=unexpected)
    figures.write()
    assert not unexpected, unexpected
    check_server_afterwards(server, workers, [])


# --- Edge values on every transport --------------------------------------------------------------------

TINY = "1e-320"  # a positive float that is zero in float32: sampling divided by it overflowed
BIG_DIGITS = "9" * 5000  # past Python's 4300-digit limit for int(str)


def _ws_edge_cases() -> list[tuple[str, str, str | None]]:
    """(frame, the outcome, the id the answer carries)"""
    chat = '{"type":"chat","id":"e","content":"hi","params":{%s}}'
    return [
        (chat % f'"temperature":{TINY}', "done", "e"),
        (chat % f'"temperature":{TINY},"seed":7', "done", "e"),
        (chat % f'"repetition_penalty":{TINY},"temperature":1', "done", "e"),
        (chat % f'"top_p":{TINY},"temperature":1', "done", "e"),
        (chat % f'"seed":{BIG_DIGITS}', "bad_request", None),  # unreadable, so its id is unknown
        ('{"type":"chat","id":"e","content":"\\ud800"}', "bad_request", "e"),
        ('{"type":"chat","id":"e","messages":[{"role":"user","content":"a\\udfff"}]}', "bad_request", "e"),
        ('{"type":"cancel","id":"e","x":"\\ud800"}', "bad_request", "e"),
        ('{"type":"cancel","id":"\\ud800"}', "bad_request", None),  # an id that is not text is not echoed
    ]


def _http_edge_cases(model: str) -> list[tuple[str, str, int]]:
    def v1(extra: str, content: str = "hi") -> str:
        return f'{{"model":"{model}","messages":[{{"role":"user","content":"{content}"}}],"max_tokens":2{extra}}}'

    return [
        ("/v1/chat/completions", v1(f',"temperature":{TINY}'), 200),
        ("/v1/chat/completions", v1(f',"temperature":{TINY},"stream":true'), 200),
        ("/v1/chat/completions", v1("", content="\\ud800"), 400),
        ("/v1/chat/completions", v1(f',"seed":{BIG_DIGITS}'), 400),
        ("/v1/chat/completions", f'{{"model":"{model}","messages":{"[" * 3000}{"]" * 3000}}}', 400),
        ("/chat", f'{{"prompt":"hi","max_new_tokens":2,"temperature":{TINY}}}', 200),
        ("/chat", '{"prompt":"\\ud800","max_new_tokens":2}', 422),
        ("/chat", f'{{"prompt":"hi","max_new_tokens":{BIG_DIGITS}}}', 400),
        ("/chat_stream", f'{{"prompt":"hi","max_new_tokens":2,"temperature":{TINY}}}', 200),
        ("/chat_stream", '{"prompt":"hi","history":[["\\udfff","x"]]}', 422),
    ]


async def test_edge_values_on_every_transport_are_served_or_refused(fuzz_server: ServeProcess) -> None:
    """Values that passed validation yet failed inside: a temperature or penalty that is zero in float32,
    lone surrogate escapes, integers past Python's digit limit. Each is served or refused with a 4xx or a
    contract error, on /ws and every HTTP API; never `internal`, a 5xx or a dropped stream."""
    import httpx

    server = fuzz_server
    workers = server.workers()
    figures = Figures("edge-values")
    problems = []
    replies: list[str] = []
    async with open_socket(server.ws, user="alice") as ws:
        for frame, expected, expected_id in _ws_edge_cases():
            await ws.send(frame)
            first = json.loads(await asyncio.wait_for(ws.recv(), FIRST_REPLY_SECONDS))
            last = first
            while last["type"] not in ("done", "error"):
                last = json.loads(await asyncio.wait_for(ws.recv(), CHAT_SECONDS))
            replies.append(json.dumps(last))
            outcome = last["type"] if last["type"] == "done" else last["code"]
            figures.add(f"ws {outcome}")
            if outcome != expected or last.get("id") != expected_id:
                problems.append(f"/ws {frame[:80]}: expected {expected}, got {last}")
    headers = {"Authorization": f"Bearer {KEYS['alice']}", "Content-Type": "application/json"}
    async with httpx.AsyncClient(base_url=server.http, timeout=CHAT_SECONDS) as http:
        model = (await http.get("/v1/models", headers=headers)).json()["data"][0]["id"]
        for path, body, expected_status in _http_edge_cases(model):
            try:
                response = await http.post(path, content=body.encode(), headers=headers)
            except httpx.HTTPError as exc:
                problems.append(f"{path} {body[:80]}: {type(exc).__name__}: {exc}")
                continue
            replies.append(response.text)
            figures.add(f"http {response.status_code}")
            complete = (
                response.status_code != 200
                or "stream" not in body + path
                or ("[DONE]" in response.text or "event: done" in response.text)
            )
            if response.status_code != expected_status or not complete:
                problems.append(f"{path} {body[:80]}: {response.status_code} {response.text[-300:]!r}")
            if "content-security-policy" not in response.headers:
                problems.append(f"{path} {body[:80]}: no security headers on {response.status_code}")
            if leaked_internals(response.text):
                problems.append(f"{path}: internals in the body: {leaked_internals(response.text)!r}")
    figures.set(ws_cases=len(_ws_edge_cases()), http_cases=len(_http_edge_cases("m")), problems=problems)
    figures.write()
    assert not problems, "\n".join(problems)
    check_server_afterwards(server, workers, replies)


async def test_a_chat_closed_at_once_frees_its_slot(serve) -> None:  # type: ignore[no-untyped-def]
    """Found by the raw cases: a chat frame followed at once by a close cancelled the reply's task before
    its first step, so its stream was never closed: the generation ran on for nobody (holding a batch
    slot) and the SIGTERM drain waited DRAIN_SECONDS for it."""
    from tests.support.reliability_rawws import encode_frame

    long_chat = json.dumps(
        {"type": "chat", "content": "hi", "params": {"max_new_tokens": 400, "temperature": 0}}
    )
    with serve(max_new_tokens=400) as live:
        for _ in range(6):
            status, sock = await open_raw("127.0.0.1", live.port, KEYS["alice"])
            assert status == 101
            # One write: the close arrives with the chat, before the reply's task has run.
            await sock.send_raw(
                encode_frame(TEXT, long_chat.encode()) + encode_frame(CLOSE, close_payload(1000))
            )
            closed = await sock.receive(timeout=10)
            assert closed is not None and closed.close_code == 1000
            await sock.close()
        service = live.service
        await asyncio.to_thread(
            wait_until, lambda: not service.drain.replies and live.engine.stats.running == 0, 2.0, 0.02
        )
