"""One stream, three ways, in one run: `model.generate` in-process, the service through /ws, and through
the OpenAI-compatible streaming endpoint.

All decode the same prompt greedily for the same number of tokens, so the ratio is the service's
overhead (gunicorn, uvicorn, the WebSocket, the engine thread, detokenisation). Prints a table and writes
bench/results/<date>-<host>-single-stream.json.

    .venv/bin/python -m bench.single_stream [--model PATH_OR_ID] [--tokens 256] [--runs 9]
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
from openai import AsyncOpenAI
from transformers import AutoModelForCausalLM, AutoTokenizer
from websockets.asyncio.client import ClientConnection, connect

from bench.serving import KEY, serve
from qwen_chat.engine.model.loader import checkpoint, resolve_device, resolve_dtype
from qwen_chat.engine.model.prompts import Prompts
from qwen_chat.engine.tiny import make_tiny_model
from qwen_chat.settings import Settings

PROMPT = "Tell me about continuous batching in language model servers."


class RawGenerate:
    """`model.generate` in this process: the ceiling for one stream."""

    def __init__(self, model_dir: str, device: str = "cpu", dtype: str = "auto") -> None:
        target = resolve_device(device)
        # Where the service loads it from: a Qwen v1 checkpoint converted to Qwen2 (engine/model/families.py).
        source = checkpoint(Settings(model=model_dir))
        tokenizer = AutoTokenizer.from_pretrained(source.path)
        model = AutoModelForCausalLM.from_pretrained(source.path, dtype=resolve_dtype(dtype, target))
        self.model = model.to(target).eval()
        self.prompts = Prompts(tokenizer, 100_000, source.family)
        prompt = self.prompts.encode_chat([{"role": "user", "content": PROMPT}])
        self.ids = torch.tensor([prompt], device=target)
        self.run(4)  # warm-up

    def run(self, tokens: int) -> float:
        started = time.perf_counter()
        with torch.inference_mode():
            out = self.model.generate(
                input_ids=self.ids,
                attention_mask=torch.ones_like(self.ids),
                max_new_tokens=tokens,
                min_new_tokens=tokens,
                do_sample=False,
            )
        return (out.shape[1] - self.ids.shape[1]) / (time.perf_counter() - started)


async def service_run(ws: ClientConnection, tokens: int) -> tuple[float, float, int]:
    """One greedy reply through /ws: (tokens/s as the client sees it, ttft ms, completion tokens)."""
    params = {"max_new_tokens": tokens, "temperature": 0, "repetition_penalty": 1.0}
    message = {"type": "chat", "messages": [{"role": "user", "content": PROMPT}], "params": params}
    await ws.send(json.dumps(message))
    started = time.perf_counter()
    first = None
    while True:
        frame = json.loads(await ws.recv())
        if frame["type"] in ("token", "reasoning") and first is None:
            first = time.perf_counter()
        if frame["type"] in {"done", "error"}:
            break
    assert frame["type"] == "done", frame
    elapsed = time.perf_counter() - started
    count = frame["usage"]["completion_tokens"]
    return count / elapsed, ((first or time.perf_counter()) - started) * 1000, count


async def openai_run(client: AsyncOpenAI, model: str, tokens: int) -> tuple[float, float, int]:
    """One greedy streamed reply through /v1/chat/completions, measured like `service_run`."""
    started = time.perf_counter()
    first = None
    count = 0
    stream = await client.chat.completions.create(
        model=model,
        messages=[{"role": "user", "content": PROMPT}],
        max_tokens=tokens,
        temperature=0,
        stream=True,
        stream_options={"include_usage": True},
    )
    async for chunk in stream:
        if chunk.choices and chunk.choices[0].delta.content and first is None:
            first = time.perf_counter()
        if chunk.usage is not None:
            count = chunk.usage.completion_tokens
    elapsed = time.perf_counter() - started
    return count / elapsed, ((first or time.perf_counter()) - started) * 1000, count


async def compare(
    url: str, base_url: str, raw: RawGenerate, tokens: int, runs: int
) -> dict[str, list[float]]:
    """Alternate the paths run by run, so that drift on a shared machine hits them alike."""
    results: dict[str, list[float]] = {
        "generate": [],
        "service": [],
        "ttft_ms": [],
        "completion_tokens": [],
        "openai": [],
        "openai_ttft_ms": [],
    }
    client = AsyncOpenAI(base_url=base_url, api_key=KEY, max_retries=0)
    model = (await client.models.list()).data[0].id
    async with connect(url, additional_headers={"Authorization": f"Bearer {KEY}"}, max_size=None) as ws:
        await service_run(ws, 4)  # warm-up
        await openai_run(client, model, 4)
        for _ in range(runs):
            results["generate"].append(raw.run(tokens))
            speed, ttft, count = await service_run(ws, tokens)
            results["service"].append(speed)
            results["ttft_ms"].append(ttft)
            results["completion_tokens"].append(count)
            speed, ttft, _ = await openai_run(client, model, tokens)
            results["openai"].append(speed)
            results["openai_ttft_ms"].append(ttft)
    await client.close()
    return results


def main() -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--model", help="model id or path (default: a freshly built tiny model)")
    parser.add_argument("--tokens", type=int, default=256)
    parser.add_argument("--runs", type=int, default=9)
    args = parser.parse_args()
    work = Path(tempfile.mkdtemp(prefix="qwen-chat-bench-"))
    model_dir = args.model or str(make_tiny_model(work / "tiny-model"))
    with serve(model_dir, work, max_new_tokens=max(args.tokens, 512)) as served:
        base_url = f"http://127.0.0.1:{served.port}/v1"
        found = asyncio.run(compare(served.ws, base_url, RawGenerate(model_dir), args.tokens, args.runs))
    raw, service, ttfts = found["generate"], found["service"], found["ttft_ms"]

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
        "service_completion_tokens": found["completion_tokens"],
        "service_ttft_ms": ttfts,
        "openai_stream_tokens_per_second": found["openai"],
        "openai_stream_ttft_ms": found["openai_ttft_ms"],
        "ratio_service_to_generate": service_median / raw_median,
        "ratio_openai_to_ws": statistics.median(found["openai"]) / service_median,
    }
    print(f"| path | tokens/s (median of {args.runs}) | ttft ms (median) |")
    print("|---|---|---|")
    print(f"| model.generate in-process | {raw_median:.1f} | |")
    print(f"| service via /ws | {service_median:.1f} | {statistics.median(ttfts):.1f} |")
    openai_median = statistics.median(found["openai"])
    print(
        f"| service via /v1/chat/completions (stream) | {openai_median:.1f} | "
        f"{statistics.median(found['openai_ttft_ms']):.1f} |"
    )
    print(f"service / generate = {result['ratio_service_to_generate']:.2f}")
    print(f"openai stream / ws = {result['ratio_openai_to_ws']:.2f}")
    out = Path(__file__).parent / "results" / f"{dt.date.today()}-{platform.node()}-single-stream.json"
    out.write_text(json.dumps(result, indent=2) + "\n")
    print(f"wrote {out}")


if __name__ == "__main__":
    main()
