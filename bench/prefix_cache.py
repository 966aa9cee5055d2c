"""The prefix cache's hits on the chat workload: how many prompt tokens of each turn the service did not
prefill again. The workload of `make bench` (bench/chat_workload.py: conversations of 5 turns over `/ws`, the
server keeping the history, replies capped by a seeded spread) against one server out of the box, on the tiny
model (`make-tiny-model`, the batch engine) or `--model`; per turn, the mean prompt tokens, the mean of them
found in the cache (`usage.prompt_tokens_details.cached_tokens` of the `done` frame), and the hit ratio of
turns 2 to 5 together, with what `/metrics` counted (`vllm:prefix_cache_hits_total` of
`vllm:prefix_cache_queries_total`).

    .venv/bin/python -m bench.prefix_cache [--clients 16] [--turns 5] [--max-reply 48] [--model PATH]
"""

from __future__ import annotations

import argparse
import asyncio
import json
import re
import tempfile
from pathlib import Path
from typing import Any

import httpx

from bench.chat_workload import conversations
from bench.hybrid import Turns, _settings, ws_conversation
from bench.serving import serve
from qwen_chat.engine.tiny import make_tiny_model


def _counted(base: str) -> dict[str, float]:
    text = httpx.get(f"{base}/metrics", timeout=30).text
    found = re.findall(r"^vllm:prefix_cache_(queries|hits)_total\{[^}]*\} (\S+)$", text, flags=re.MULTILINE)
    return {name: float(value) for name, value in found}


def measure(clients: int, turns: int, max_reply: int | None, model: str | None, work: Path) -> dict[str, Any]:
    model = model or str(make_tiny_model(work / "tiny", family="qwen2"))
    plans = conversations(clients, turns, max_reply)
    record = Turns()
    with serve(model, work, **_settings(clients)) as served:
        base = f"http://127.0.0.1:{served.port}"

        async def run() -> None:
            await asyncio.gather(*(ws_conversation(served.ws, plan, record) for plan in plans))

        asyncio.run(run())
        counted = _counted(base)
    by_turn = []
    for turn in range(1, turns + 1):
        rows = [row for row in record.rows if row["turn"] == turn]
        prompt = sum(row["prompt_tokens"] for row in rows)
        cached = prompt - sum(row["prefilled"] for row in rows)
        by_turn.append({"turn": turn, "prompt_tokens": prompt, "cached_tokens": cached})
    later = [row for row in by_turn if row["turn"] > 1]
    prompt, cached = sum(r["prompt_tokens"] for r in later), sum(r["cached_tokens"] for r in later)
    return {
        "clients": clients,
        "by_turn": by_turn,
        "turns_2_on_hit_ratio": round(cached / prompt, 3) if prompt else None,
        "metrics": counted,
        "metrics_hit_ratio": round(counted["hits"] / counted["queries"], 3)
        if counted.get("queries")
        else None,
    }


def main() -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--clients", type=int, default=16)
    parser.add_argument("--turns", type=int, default=5)
    parser.add_argument("--max-reply", type=int, default=48)
    parser.add_argument("--model", default=None)
    args = parser.parse_args()
    with tempfile.TemporaryDirectory() as work:
        result = measure(args.clients, args.turns, args.max_reply, args.model, Path(work))
    print(json.dumps(result, indent=1))


if __name__ == "__main__":
    main()
