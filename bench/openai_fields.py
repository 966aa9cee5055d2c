"""What structured outputs and tools cost, through /v1 of the running service at N concurrent streams.

- Structured outputs: every client asks for a JSON array of 48 integers (`response_format` json_schema, a
  grammar mask on every token of its row), then the same number of tokens unconstrained; aggregate
  completion tokens per second of the two, in one run. The issue's goal: constrained >= 0.9x.
- Tools: the same unconstrained replies with five tools in the request (`tool_choice: auto`, the tool-call
  parser reading every delta), against none but a system message holding the same tool listing as text
  (the same prompt length, so attention over the longer context costs both alike); the decode rate once
  the first token is out (tokens per second of each stream after its first). Goal: >= 0.95x.

Both at the server's default sampling. Called by bench/suite.py (`make bench`); alone, from the
repository root:

    .venv/bin/python -m bench.openai_fields --port PORT [--clients 16] [--rounds 2] [--pairs 3]
"""

from __future__ import annotations

import argparse
import asyncio
import json
import statistics
import time
from dataclasses import dataclass
from typing import Any

import httpx

from bench.chat_workload import sse_data
from bench.serving import KEY

SCHEMA = {
    "type": "array",
    "items": {"type": "integer", "minimum": 0, "maximum": 999},
    "minItems": 48,
    "maxItems": 48,
}
CONSTRAINED = {"type": "json_schema", "json_schema": {"name": "numbers", "schema": SCHEMA}}
TOOLS = [
    {
        "type": "function",
        "function": {
            "name": f"tool_{n}",
            "description": f"Look up fact number {n} about a city",
            "parameters": {
                "type": "object",
                "properties": {"city": {"type": "string"}, "detail": {"type": "integer"}},
                "required": ["city"],
            },
        },
    }
    for n in range(5)
]


@dataclass
class Reply:
    tokens: int
    first: float  # monotonic time of the first content (or tool-call) chunk
    last: float  # of the finish chunk
    text: str


# What Qwen2.5's template writes into the system turn for TOOLS, as plain text: the baseline's prompt is as
# long as the tools request's.
LISTING = (
    "You are a helpful assistant.\n\n# Tools\n\nYou may call one or more functions to assist with the user "
    "query.\n\nYou are provided with function signatures within <tools></tools> XML tags:\n<tools>\n"
    + "\n".join(json.dumps(tool) for tool in TOOLS)
    + "\n</tools>\n\nFor each function call, return a json object with function name and arguments within "
    '<tool_call></tool_call> XML tags:\n<tool_call>\n{"name": <function-name>, "arguments": '
    "<args-json-object>}\n</tool_call>"
)


async def _stream(
    client: httpx.AsyncClient, model: str, n: int, max_tokens: int, extra: dict[str, Any]
) -> Reply:
    extra = dict(extra)
    system = extra.pop("system", None)
    messages = [{"role": "user", "content": f"Give me numbers, please ({n})."}]
    body = {
        "model": model,
        "messages": [{"role": "system", "content": system}, *messages] if system else messages,
        "max_tokens": max_tokens,
        "stream": True,
        "stream_options": {"include_usage": True},
        **extra,
    }
    tokens, first, last, parts = 0, 0.0, 0.0, []
    async with client.stream("POST", "/v1/chat/completions", json=body) as response:
        response.raise_for_status()
        async for data in sse_data(response):
            chunk = json.loads(data)
            if chunk.get("usage"):
                tokens = chunk["usage"]["completion_tokens"]
            for choice in chunk["choices"]:
                now = time.monotonic()
                delta = choice["delta"]
                if delta.get("content") or delta.get("tool_calls"):
                    first = first or now
                    parts.append(delta.get("content") or "")
                if choice["finish_reason"]:  # the last token is in: the decode time covers every token
                    last = now
    return Reply(tokens, first, last, "".join(parts))


async def _level(
    port: int, model: str, clients: int, rounds: int, max_tokens: int, extra: dict[str, Any]
) -> tuple[float, list[Reply]]:
    """Aggregate completion tokens/s of `clients` streams, each `rounds` replies in a row."""
    headers = {"Authorization": f"Bearer {KEY}"}
    async with httpx.AsyncClient(base_url=f"http://127.0.0.1:{port}", headers=headers, timeout=600) as client:

        async def one(c: int) -> list[Reply]:
            return [await _stream(client, model, c * rounds + r, max_tokens, extra) for r in range(rounds)]

        started = time.monotonic()
        replies = [
            reply
            for per_client in await asyncio.gather(*(one(c) for c in range(clients)))
            for reply in per_client
        ]
        wall = time.monotonic() - started
    return sum(r.tokens for r in replies) / wall, replies


def _decode_rate(replies: list[Reply]) -> float:
    """Median tokens/s of a stream after its first token."""
    rates = [(r.tokens - 1) / (r.last - r.first) for r in replies if r.tokens > 1 and r.last > r.first]
    return statistics.median(rates) if rates else 0.0


async def measure_fields(
    port: int, model: str, clients: int = 16, rounds: int = 2, pairs: int = 3
) -> dict[str, Any]:
    """Each comparison `pairs` times, its two sides back to back; the figures are the medians, so a
    shared machine's slow moment costs one pair, not one side."""
    await _level(port, model, 2, 1, 16, {"response_format": CONSTRAINED})  # compiles the grammar once
    _, first = await _level(port, model, clients, 1, 512, {"response_format": CONSTRAINED})
    length = round(statistics.mean(r.tokens for r in first))
    tools_request = {"tools": TOOLS, "tool_choice": "auto"}
    sides: dict[str, list[float]] = {"constrained": [], "free": [], "listed": [], "tools": []}
    valid = replies = 0
    for _ in range(pairs):
        rate, constrained = await _level(port, model, clients, rounds, 512, {"response_format": CONSTRAINED})
        sides["constrained"].append(rate)
        valid += sum(1 for r in constrained if _valid(r.text))
        replies += len(constrained)
        sides["free"].append((await _level(port, model, clients, rounds, length, {}))[0])
        listed = (await _level(port, model, clients, rounds, length, {"system": LISTING}))[1]
        sides["listed"].append(_decode_rate(listed))
        sides["tools"].append(
            _decode_rate((await _level(port, model, clients, rounds, length, tools_request))[1])
        )
    ratio = lambda a, b: round(statistics.median(x / y for x, y in zip(sides[a], sides[b], strict=True)), 3)  # noqa: E731
    median = lambda side: round(statistics.median(sides[side]), 1)  # noqa: E731
    return {
        "clients": clients,
        "pairs": pairs,
        "replies": replies,
        "tokens_per_reply": length,
        "constrained_valid": valid,
        "constrained_tokens_per_second": median("constrained"),
        "free_tokens_per_second": median("free"),
        "constrained_ratio": ratio("constrained", "free"),
        "free_decode_tokens_per_second": median("listed"),
        "tools_decode_tokens_per_second": median("tools"),
        "tools_decode_ratio": ratio("tools", "listed"),
    }


def _valid(text: str) -> bool:
    try:
        value = json.loads(text)
    except ValueError:
        return False
    return (
        isinstance(value, list)
        and len(value) == 48
        and all(isinstance(v, int) and 0 <= v <= 999 for v in value)
    )


def targets(fields: dict[str, Any]) -> list[tuple[str, float | None, float, bool, str]]:
    """(target, measured, goal, higher is better, unit) for the issue's structured-output and tool targets."""
    n = fields["clients"]
    return [
        (f"structured outputs, {n} streams: vs unconstrained", fields["constrained_ratio"], 0.9, True, "x"),
        (f"five tools, {n} streams: decode rate vs none", fields["tools_decode_ratio"], 0.95, True, "x"),
    ]


def markdown(fields: dict[str, Any]) -> list[str]:
    n, valid = fields["clients"], f"{fields['constrained_valid']}/{fields['replies']} valid"
    return [
        f"Structured outputs and tools at {n} streams (/v1, default sampling, bench/openai_fields.py): "
        f"replies of {fields['tokens_per_reply']} tokens, each comparison {fields['pairs']} times back to "
        "back (medians; the ratio is the median of the pairs' ratios).",
        "",
        "| | tokens/s | ratio | goal |",
        "|---|---|---|---|",
        f"| unconstrained | {fields['free_tokens_per_second']} | 1 | |",
        f"| `response_format` json_schema (48-integer array; {valid}) "
        f"| {fields['constrained_tokens_per_second']} | {fields['constrained_ratio']} | >= 0.9 |",
        f"| decode rate per stream, the tool listing as text "
        f"| {fields['free_decode_tokens_per_second']} | 1 | |",
        f"| decode rate per stream, five tools (`tool_choice: auto`) "
        f"| {fields['tools_decode_tokens_per_second']} | {fields['tools_decode_ratio']} | >= 0.95 |",
        "",
    ]


def main() -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--port", type=int, required=True)
    parser.add_argument("--clients", type=int, default=16)
    parser.add_argument("--rounds", type=int, default=2)
    parser.add_argument("--pairs", type=int, default=3)
    args = parser.parse_args()
    with httpx.Client(
        base_url=f"http://127.0.0.1:{args.port}", headers={"Authorization": f"Bearer {KEY}"}
    ) as client:
        model = client.get("/v1/models").json()["data"][0]["id"]
    fields = asyncio.run(measure_fields(args.port, model, args.clients, args.rounds, args.pairs))
    print("\n".join(markdown(fields)))


if __name__ == "__main__":
    main()
