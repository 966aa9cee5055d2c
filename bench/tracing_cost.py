"""What traces cost: the chat workload (bench/chat_workload.py: multi-turn conversations, the server's
default sampling) against two `qwen-chat serve`s side by side, one as it ships (no OTLP endpoint: traces
off) and one exporting every chat's spans (sampler always_on) to an OTLP/HTTP sink in this process.

Off executes strictly less than on (one `is None` check per request where on builds and exports spans), so
on's cost bounds off's: when on is within the run-to-run noise of off, off costs nothing measurable. The
two servers take turns at each level, in reverse order at every other round, so that the machine's drift
falls on both alike; each figure is the median over --rounds.

    .venv/bin/python -m bench.tracing_cost [--model PATH] [--clients 1,16] [--rounds 3] [--max-reply 64]
"""

from __future__ import annotations

import argparse
import asyncio
import statistics
import tempfile
import threading
from collections.abc import Iterator
from contextlib import ExitStack, contextmanager
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import Any

from bench.chat_workload import ChatLevel, measure_chat
from bench.serving import serve
from qwen_chat.engine.tiny import make_tiny_model

OFF, ON = "traces off (as shipped)", "traces on, every chat exported"


@contextmanager
def otlp_sink() -> Iterator[dict[str, int]]:
    """Accept OTLP/HTTP exports on 127.0.0.1 and count them: a collector that costs the server nothing."""
    seen = {"requests": 0, "bytes": 0}

    class Sink(BaseHTTPRequestHandler):
        def do_POST(self) -> None:
            body = self.rfile.read(int(self.headers.get("Content-Length", 0)))
            seen["requests"] += 1
            seen["bytes"] += len(body)
            self.send_response(200)
            self.send_header("Content-Length", "0")
            self.end_headers()

        def log_message(self, *args: Any) -> None:
            pass

    server = ThreadingHTTPServer(("127.0.0.1", 0), Sink)
    seen["port"] = server.server_address[1]
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    try:
        yield seen
    finally:
        server.shutdown()
        server.server_close()


def main() -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--model", help="model path (default: a freshly built tiny model)")
    parser.add_argument("--clients", default="1,16", help="clients of the chat workload, per level")
    parser.add_argument("--rounds", type=int, default=3, help="rounds of every level on both servers")
    parser.add_argument("--turns", type=int, default=3)
    parser.add_argument("--max-reply", type=int, default=64, help="cap every reply at this")
    args = parser.parse_args()
    levels = [int(n) for n in args.clients.split(",")]
    work = Path(tempfile.mkdtemp(prefix="qwen-chat-tracing-"))
    model = args.model or str(make_tiny_model(work / "tiny-model"))
    # One bench key stands for every client: its per-user caps are lifted, as in `make bench`.
    settings = {
        "rate_limit": "1000000/minute",
        "max_user_requests": 1000,
        "max_user_connections": 1000,
        "log_level": "warning",
    }
    with ExitStack() as stack:
        sink = stack.enter_context(otlp_sink())
        traced = {
            "OTEL_EXPORTER_OTLP_ENDPOINT": f"http://127.0.0.1:{sink['port']}",
            "OTEL_TRACES_SAMPLER": "always_on",
        }
        for name in ("off", "on"):
            (work / name).mkdir()
        off = stack.enter_context(serve(model, work / "off", **settings))
        on = stack.enter_context(serve(model, work / "on", environ=traced, **settings))
        ours = {OFF: off.ws, ON: on.ws}
        rounds = [
            asyncio.run(measure_chat(ours, None, "", levels, args.turns, args.max_reply))
            for _ in range(args.rounds)
        ]
    print(f"the OTLP sink received {sink['requests']} exports, {sink['bytes']} bytes", flush=True)
    print_table(rounds, levels)


def print_table(rounds: list[list[ChatLevel]], levels: list[int], off: str = OFF, on: str = ON) -> None:
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


if __name__ == "__main__":
    main()
