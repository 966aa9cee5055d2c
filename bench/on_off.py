"""What the on/off benchmarks share (bench/tracing_cost.py, bench/kv_events_cost.py): the chat workload
(bench/chat_workload.py) against two `qwen-chat serve`s side by side, one as it ships and one with a feature
on; they take turns at each level, in reverse order at every other round, so that the machine's drift falls
on both alike; each figure is the median over the rounds."""

from __future__ import annotations

import argparse
import asyncio
import statistics
import tempfile
from contextlib import ExitStack
from pathlib import Path
from typing import Any

from bench.chat_workload import ChatLevel, measure_chat
from bench.serving import serve
from qwen_chat.engine.tiny import make_tiny_model

# One bench key stands for every client: its per-user caps are lifted, as in `make bench`.
SETTINGS: dict[str, Any] = {
    "rate_limit": "1000000/minute",
    "max_user_requests": 1000,
    "max_user_connections": 1000,
    "log_level": "warning",
}


def arguments(doc: str | None, clients: str, rounds: int, turns: int) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=doc, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--model", help="model path (default: a freshly built tiny model)")
    parser.add_argument("--clients", default=clients, help="clients of the chat workload, per level")
    parser.add_argument("--rounds", type=int, default=rounds, help="rounds of every level on both servers")
    parser.add_argument("--turns", type=int, default=turns)
    parser.add_argument("--max-reply", type=int, default=64, help="cap every reply at this")
    return parser.parse_args()


def levels(args: argparse.Namespace) -> list[int]:
    return [int(n) for n in args.clients.split(",")]


def run_on_off(
    stack: ExitStack,
    args: argparse.Namespace,
    names: tuple[str, str],
    on: dict[str, Any],
    environ: dict[str, str] | None = None,
) -> list[list[ChatLevel]]:
    """Both servers (the second with the settings `on` and `environ`), then every round of every level."""
    work = Path(tempfile.mkdtemp(prefix="qwen-chat-on-off-"))
    model = args.model or str(make_tiny_model(work / "tiny-model"))
    for name in ("off", "on"):
        (work / name).mkdir()
    off_server = stack.enter_context(serve(model, work / "off", **SETTINGS))
    on_server = stack.enter_context(serve(model, work / "on", environ=environ, **SETTINGS, **on))
    ours = {names[0]: off_server.ws, names[1]: on_server.ws}
    return [
        asyncio.run(measure_chat(ours, None, "", levels(args), args.turns, args.max_reply))
        for _ in range(args.rounds)
    ]


def print_table(rounds: list[list[ChatLevel]], levels: list[int], off: str, on: str) -> None:
    """Per level and server: the median over rounds, their spread, and on / off."""
    print("| clients | server | tokens/s (median) | runs' spread | TTFT p50 (ms) | ITL p50 (ms) | on / off |")
    print("|---|---|---|---|---|---|---|")
    for clients in levels:
        rows = {}
        for server in (off, on):
            runs = [
                lv.summary() for run in rounds for lv in run if lv.server == server and lv.clients == clients
            ]
            speeds = [r["tokens_per_second"] for r in runs]
            rows[server] = (
                statistics.median(speeds),
                (max(speeds) - min(speeds)) / statistics.median(speeds) if speeds else 0.0,
                statistics.median(r["ttft_ms_p50"] or 0 for r in runs),
                statistics.median(r["itl_ms_p50"] or 0 for r in runs),
                sum(r["errors"] for r in runs),
            )
        for server, (speed, spread, ttft, itl, errors) in rows.items():
            ratio = f"{speed / rows[off][0]:.3f}" if server == on else "1"
            note = f" ({errors} errors)" if errors else ""
            cells = [
                str(clients),
                server + note,
                f"{speed:.1f}",
                f"{spread:.1%}",
                f"{ttft:.1f}",
                f"{itl:.1f}",
            ]
            print("| " + " | ".join([*cells, ratio]) + " |", flush=True)
