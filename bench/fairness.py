"""What a second user sees while one key floods the service: `qwen-chat serve` out of the box, one key with
60 sockets (more than MAX_RUNNING + MAX_WAITING on CPU) each asking for replies in a loop, and another
user's chats meanwhile.

Three runs, each its own server, in one process: the other user alone (the baseline); beside the flood with
the default per-user caps (MAX_USER_REQUESTS half of MAX_RUNNING, MAX_USER_CONNECTIONS 16); and beside the
flood with the caps lifted past MAX_RUNNING + MAX_WAITING (only the turn-taking queue left). For each: the
other user's time to first token and reply time (median of its chats), and what the flood got (replies,
`rate_limited`, `overloaded`, sockets closed with 1013). The server's default sampling, replies of
--tokens tokens for everyone.

    .venv/bin/python -m bench.fairness [--model PATH] [--tokens 128] [--chats 4] [--flood 60]
"""

from __future__ import annotations

import argparse
import asyncio
import json
import statistics
import tempfile
import time
from collections import Counter
from pathlib import Path
from typing import Any

from websockets.asyncio.client import ClientConnection, connect
from websockets.exceptions import ConnectionClosed

from bench.serving import KEY, OTHER_KEY, serve
from qwen_chat.engine.tiny import make_tiny_model


async def _reply(ws: ClientConnection, tokens: int) -> tuple[str, float, float]:
    """One chat: how it ended (done, or the error code), seconds to its first token and to its end."""
    sent = time.perf_counter()
    await ws.send(
        json.dumps({"type": "chat", "content": "a long story", "params": {"max_new_tokens": tokens}})
    )
    first = 0.0
    while True:
        frame = json.loads(await ws.recv())
        if frame["type"] == "token" and not first:
            first = time.perf_counter() - sent
        if frame["type"] in ("done", "error"):
            return frame.get("code", "done"), first, time.perf_counter() - sent


async def _flooder(url: str, tokens: int, outcomes: Counter[str], stop: asyncio.Event) -> None:
    headers = {"Authorization": f"Bearer {KEY}"}
    try:
        async with connect(url, additional_headers=headers, max_size=None) as ws:
            while not stop.is_set():
                outcome, _, _ = await _reply(ws, tokens)
                outcomes[outcome] += 1
                if outcome != "done":
                    await asyncio.sleep(1.0)  # as a client honouring retry_after would
    except ConnectionClosed as closed:
        outcomes[f"closed {closed.rcvd.code if closed.rcvd else 'without a code'}"] += 1


async def _run(url: str, tokens: int, chats: int, flood: int) -> dict[str, Any]:
    outcomes: Counter[str] = Counter()
    stop = asyncio.Event()
    tasks = [asyncio.create_task(_flooder(url, tokens, outcomes, stop)) for _ in range(flood)]
    await asyncio.sleep(3.0 if flood else 0.0)  # the flood fills the slots first
    firsts, totals, ends = [], [], Counter[str]()
    async with connect(url, additional_headers={"Authorization": f"Bearer {OTHER_KEY}"}) as ws:
        for _ in range(chats):
            outcome, first, total = await _reply(ws, tokens)
            ends[outcome] += 1
            if outcome == "done":
                firsts.append(first)
                totals.append(total)
    stop.set()
    await asyncio.gather(*tasks, return_exceptions=True)
    return {
        "other_ttft_s": round(statistics.median(firsts), 3) if firsts else None,
        "other_reply_s": round(statistics.median(totals), 3) if totals else None,
        "other_outcomes": dict(ends),
        "flood_outcomes": dict(outcomes),
    }


def main() -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--model", help="model path (default: a freshly built tiny model)")
    parser.add_argument("--tokens", type=int, default=128)
    parser.add_argument("--chats", type=int, default=4, help="the other user's chats per run")
    parser.add_argument("--flood", type=int, default=60, help="the flooding key's sockets")
    args = parser.parse_args()
    work = Path(tempfile.mkdtemp(prefix="qwen-chat-fairness-"))
    model = args.model or str(make_tiny_model(work / "tiny-model"))
    lifted = {"max_user_requests": 1000, "max_user_connections": 1000}
    runs = [
        ("alone", 0, {}),
        ("flood, default caps", args.flood, {}),
        ("flood, caps lifted", args.flood, lifted),
    ]
    print("| run | other user's TTFT p50 (s) | its reply p50 (s) | its chats | the flood got |")
    print("|---|---|---|---|---|")
    for name, flood, caps in runs:
        with serve(model, work, rate_limit="1000000/minute", log_level="warning", **caps) as served:
            result = asyncio.run(_run(served.ws, args.tokens, args.chats, flood))
        flood_got = ", ".join(f"{k} {v}" for k, v in sorted(result["flood_outcomes"].items())) or "-"
        print(
            f"| {name} | {result['other_ttft_s']} | {result['other_reply_s']} | {result['other_outcomes']} | "
            f"{flood_got} |",
            flush=True,
        )


if __name__ == "__main__":
    main()
