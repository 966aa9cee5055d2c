"""One stream, two ways, in one run: `model.generate` in-process versus the service through /ws.

Both decode the same prompt greedily for the same number of tokens, so the ratio is the service's
overhead (gunicorn, uvicorn, the WebSocket, the engine thread, detokenisation). Prints a table and writes
bench/results/<date>-<host>-single-stream.json.

    .venv/bin/python bench/single_stream.py [--model PATH_OR_ID] [--tokens 256] [--runs 5]
"""

from __future__ import annotations

import argparse
import asyncio
import datetime as dt
import json
import platform
import statistics
import tempfile
import time
from pathlib import Path

import torch
from serving import KEY, serve
from transformers import AutoModelForCausalLM, AutoTokenizer
from websockets.asyncio.client import connect

from qwen_chat.prompts import Prompts
from qwen_chat.tiny_model import make_tiny_model

PROMPT = "Tell me about continuous batching in language model servers."


def raw_generate(model_dir: str, tokens: int, runs: int) -> list[float]:
    tokenizer = AutoTokenizer.from_pretrained(model_dir)
    model = AutoModelForCausalLM.from_pretrained(model_dir).eval()
    ids = torch.tensor([Prompts(tokenizer, 100_000).encode_chat([{"role": "user", "content": PROMPT}])])
    speeds = []
    with torch.inference_mode():
        model.generate(input_ids=ids, max_new_tokens=4, do_sample=False)  # warm-up
        for _ in range(runs):
            started = time.perf_counter()
            out = model.generate(
                input_ids=ids,
                attention_mask=torch.ones_like(ids),
                max_new_tokens=tokens,
                min_new_tokens=tokens,
                do_sample=False,
            )
            speeds.append((out.shape[1] - ids.shape[1]) / (time.perf_counter() - started))
    return speeds


async def service_stream(url: str, tokens: int, runs: int) -> tuple[list[float], list[float], list[int]]:
    speeds, ttfts, counts = [], [], []
    async with connect(url, additional_headers={"Authorization": f"Bearer {KEY}"}, max_size=None) as ws:
        params = {"max_new_tokens": tokens, "temperature": 0, "repetition_penalty": 1.0}
        for run in range(runs + 1):
            await ws.send(
                json.dumps(
                    {"type": "chat", "messages": [{"role": "user", "content": PROMPT}], "params": params}
                )
            )
            started = time.perf_counter()
            first = None
            while True:
                frame = json.loads(await ws.recv())
                if frame["type"] == "token" and first is None:
                    first = time.perf_counter()
                if frame["type"] in {"done", "error"}:
                    break
            assert frame["type"] == "done", frame
            if run == 0:
                continue  # warm-up
            elapsed = time.perf_counter() - started
            counts.append(frame["usage"]["completion_tokens"])
            speeds.append(frame["usage"]["completion_tokens"] / elapsed)
            ttfts.append(((first or time.perf_counter()) - started) * 1000)
    return speeds, ttfts, counts


def main() -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--model", help="model id or path (default: a freshly built tiny model)")
    parser.add_argument("--tokens", type=int, default=256)
    parser.add_argument("--runs", type=int, default=5)
    args = parser.parse_args()
    work = Path(tempfile.mkdtemp(prefix="qwen-chat-bench-"))
    model_dir = args.model or str(make_tiny_model(work / "tiny-model"))
    raw = raw_generate(model_dir, args.tokens, args.runs)

    with serve(model_dir, work, max_new_tokens=max(args.tokens, 512)) as served:
        service, ttfts, counts = asyncio.run(service_stream(served.ws, args.tokens, args.runs))

    raw_median, service_median = statistics.median(raw), statistics.median(service)
    result = {
        "date": dt.datetime.now(dt.UTC).isoformat(timespec="seconds"),
        "host": platform.node(),
        "device": "cuda" if torch.cuda.is_available() else "cpu",
        "torch_threads": torch.get_num_threads(),
        "model": args.model or "tiny (qwen-chat make-tiny-model)",
        "tokens": args.tokens,
        "runs": args.runs,
        "generate_tokens_per_second": raw,
        "service_tokens_per_second": service,
        "service_completion_tokens": counts,
        "service_ttft_ms": ttfts,
        "ratio_service_to_generate": service_median / raw_median,
    }
    print(f"| path | tokens/s (median of {args.runs}) | ttft ms (median) |")
    print("|---|---|---|")
    print(f"| model.generate in-process | {raw_median:.1f} | |")
    print(f"| service via /ws | {service_median:.1f} | {statistics.median(ttfts):.1f} |")
    print(f"service / generate = {result['ratio_service_to_generate']:.2f}")
    out = Path(__file__).parent / "results" / f"{dt.date.today()}-{platform.node()}-single-stream.json"
    out.write_text(json.dumps(result, indent=2) + "\n")
    print(f"wrote {out}")


if __name__ == "__main__":
    main()
