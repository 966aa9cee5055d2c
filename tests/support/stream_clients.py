"""Streaming clients that report how a reply ended, as its client saw it: finished, ended with an error event
the client can read, refused before it began, cut mid-body (a protocol error), or hung; and how the server
counted the replies (`outcomes`).

`/v1` streams are read with the official `openai` SDK (chat) and with httpx (completions, and the raw body of
a chat); `/chat_stream` with httpx. `streaming` is set once the first token arrived, so a test can strike
while the reply is in flight.
"""

from __future__ import annotations

import asyncio
import json
from collections import Counter
from dataclasses import dataclass, field
from typing import Any

import httpx
import openai
from prometheus_client.parser import text_string_to_metric_families

FINISHED, ERRORED, REFUSED, CUT, HUNG = "finished", "errored", "refused", "cut", "hung"


def outcomes(http: str) -> Counter[tuple[str, str]]:
    """requests_total at the server `http` by transport and outcome, summed over models (other tests' servers
    share the registry)."""
    counts: Counter[tuple[str, str]] = Counter()
    for family in text_string_to_metric_families(httpx.get(http + "/metrics").text):
        for sample in family.samples:
            if sample.name == "qwen_chat_requests_total":
                counts[(sample.labels["transport"], sample.labels["outcome"])] += int(sample.value)
    return counts


@dataclass
class Ending:
    how: str  # one of the five above
    detail: Any = None  # the error object, the status, or the exception's text
    tokens: int = 0  # content events received before the end
    events: list[Any] = field(default_factory=list)  # the last few events, for a failure's message


def _sse_events(text: str) -> list[tuple[str | None, str]]:
    """(event name, data) of each event in a complete SSE body."""
    events = []
    for block in text.split("\n\n"):
        name, data = None, []
        for line in block.splitlines():
            if line.startswith("event:"):
                name = line.removeprefix("event:").strip()
            elif line.startswith("data:"):
                data.append(line.removeprefix("data:").strip())
        if data:
            events.append((name, "\n".join(data)))
    return events


def _v1_ending(events: list[tuple[str | None, str]]) -> Ending:
    """A whole `/v1` body: chunks, then an error object or a finish, then `[DONE]` (nothing else passes)."""
    tail = [data for _, data in events[-3:]]
    if not events or events[-1][1] != "[DONE]":
        return Ending(CUT, "no [DONE] at the end", events=tail)
    objects = [json.loads(data) for _, data in events[:-1]]
    tokens = sum(1 for _, data in events[:-1] if _content(data))
    last = objects[-1] if objects else {}
    if "error" in last:
        return Ending(ERRORED, last["error"], tokens, tail)
    finished = any(c.get("finish_reason") for o in objects for c in o.get("choices", []))
    return Ending(FINISHED if finished else CUT, None, tokens, tail)


def _seed_ending(events: list[tuple[str | None, str]]) -> Ending:
    tail = [data for _, data in events[-3:]]
    tokens = sum(1 for name, data in events if name is None and _content(data))
    if events and events[-1][0] == "error":
        return Ending(ERRORED, json.loads(events[-1][1])["error"], tokens, tail)
    if events and events[-1][0] == "done":
        return Ending(FINISHED, json.loads(events[-1][1])["finish_reason"], tokens, tail)
    return Ending(CUT, "no done or error event at the end", tokens, tail)


async def http_stream(
    http: httpx.AsyncClient,
    path: str,
    body: dict[str, Any],
    headers: dict[str, str],
    streaming: asyncio.Event | None = None,
    deadline: float = 60.0,
) -> Ending:
    """POST a streaming request and read its body to the end (`/v1/...` or `/chat_stream`)."""
    text = ""
    try:
        async with asyncio.timeout(deadline):
            async with http.stream("POST", path, json=body, headers=headers) as response:
                if response.status_code != 200:
                    await response.aread()
                    return Ending(REFUSED, (response.status_code, response.json().get("error")))
                async for chunk in response.aiter_text():
                    text += chunk
                    if streaming is not None and not streaming.is_set() and _has_token(text):
                        streaming.set()
    except TimeoutError:
        return Ending(HUNG, f"no end in {deadline} s")
    except (
        httpx.HTTPError
    ) as exc:  # RemoteProtocolError: "peer closed connection ... incomplete chunked read"
        return Ending(CUT, f"{type(exc).__name__}: {exc}", events=_sse_events(text)[-3:])
    events = _sse_events(text)
    return _v1_ending(events) if path.startswith("/v1/") else _seed_ending(events)


def _has_token(text: str) -> bool:
    return any(name is None and _content(data) for name, data in _sse_events(text))


def _content(data: str) -> bool:
    """The event carries reply text: a chat chunk's `content`, a completion's `text`, the seed API's `text`."""
    if not data.startswith("{"):
        return False
    event = json.loads(data)
    if "text" in event:  # the seed API
        return bool(event["text"])
    return any(c.get("text") or (c.get("delta") or {}).get("content") for c in event.get("choices", []))


async def sdk_chat(
    client: openai.AsyncOpenAI, streaming: asyncio.Event | None = None, deadline: float = 60.0, **request: Any
) -> Ending:
    """A streaming chat through the official SDK: an `APIError` mid-stream is an error event the client
    read; `APIConnectionError` (what a body cut mid-stream raises) is a cut."""
    tokens = 0
    finish = None
    try:
        async with asyncio.timeout(deadline):
            # Read to [DONE], as the SDK's users do: a stream left open holds its connection from the pool.
            async with await client.chat.completions.create(stream=True, **request) as stream:
                async for chunk in stream:
                    if chunk.choices and chunk.choices[0].delta.content:
                        tokens += 1
                        if streaming is not None:
                            streaming.set()
                    if chunk.choices and chunk.choices[0].finish_reason:
                        finish = chunk.choices[0].finish_reason
    except TimeoutError:
        return Ending(HUNG, f"no end in {deadline} s", tokens)
    except openai.APIConnectionError as exc:
        return Ending(CUT, f"{type(exc).__name__}: {exc}", tokens)
    except openai.APIStatusError as exc:
        return Ending(REFUSED, (exc.status_code, exc.body), tokens)
    except openai.APIError as exc:
        body = exc.body if isinstance(exc.body, dict) else {}
        return Ending(ERRORED, {"exception": type(exc).__name__, **body, "message": exc.message}, tokens)
    if finish is None:
        return Ending(CUT, "the stream ended without a finish reason", tokens)
    return Ending(FINISHED, finish, tokens)
