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

import threading
from collections.abc import Iterator
from contextlib import ExitStack, contextmanager
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any

from bench.on_off import arguments, levels, print_table, run_on_off

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
    args = arguments(__doc__, clients="1,16", rounds=3, turns=3)
    with ExitStack() as stack:
        sink = stack.enter_context(otlp_sink())
        traced = {
            "OTEL_EXPORTER_OTLP_ENDPOINT": f"http://127.0.0.1:{sink['port']}",
            "OTEL_TRACES_SAMPLER": "always_on",
        }
        rounds = run_on_off(stack, args, (OFF, ON), {}, traced)
    print(f"the OTLP sink received {sink['requests']} exports, {sink['bytes']} bytes", flush=True)
    print_table(rounds, levels(args), OFF, ON)


if __name__ == "__main__":
    main()
