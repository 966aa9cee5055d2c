"""The service's prefill, for the limits of `make bench`: its time to first token of a long prompt it has
not seen (about 500 tokens), set against the raw forward pass on the same tokens (bench/machine_limits.py).
"""

from __future__ import annotations

import json
import time

from websockets.asyncio.client import connect

from bench.chat_workload import Conversation
from bench.serving import KEY

# The long new prompt whose prefill the service and the raw forward both time (about 500 tokens).
PREFILL_WORDS = 150


def long_prompt() -> list[dict[str, str]]:
    return [{"role": "user", "content": Conversation(PREFILL_WORDS, (), seed=99).message(0)}]


async def prefill_seconds(ws_url: str, messages: list[dict[str, str]], runs: int = 3) -> float:
    """The service's time to first token for a long prompt it has not seen (best of `runs`)."""
    best = float("inf")
    async with connect(ws_url, additional_headers={"Authorization": f"Bearer {KEY}"}, max_size=None) as ws:
        for run in range(runs):
            fresh = [{"role": "user", "content": f"{run} {messages[0]['content']} {time.time()}"}]
            await ws.send(json.dumps({"type": "chat", "messages": fresh, "params": {"max_new_tokens": 1}}))
            sent = time.perf_counter()
            first = None
            while True:
                frame = json.loads(await ws.recv())
                if frame["type"] in ("token", "reasoning", "done") and first is None:
                    first = time.perf_counter() - sent
                if frame["type"] == "error":
                    raise RuntimeError(f"the prefill probe was refused: {frame}")
                if frame["type"] == "done":
                    break
            best = min(best, first or float("inf"))
    return best
