"""What publishing KV-cache events costs: the chat workload (bench/chat_workload.py: multi-turn conversations
over `/ws`, the server's default sampling) against two `qwen-chat serve`s side by side, one as it ships
(no events) and one publishing them (QWEN_CHAT_KV_EVENTS_ENDPOINT) to a ZMQ subscriber in this process that
reads every message, as llm-d's precise prefix-cache scorer would. The servers take turns at each level, in
reverse order at every other round (bench/tracing_cost.py); each figure is the median over --rounds.

    .venv/bin/python -m bench.kv_events_cost [--model PATH] [--clients 16] [--rounds 1] [--max-reply 64]
"""

from __future__ import annotations

import argparse
import asyncio
import socket
import tempfile
import threading
from collections.abc import Iterator
from contextlib import ExitStack, contextmanager
from pathlib import Path

import zmq

from bench.chat_workload import measure_chat
from bench.serving import serve
from bench.tracing_cost import print_table
from qwen_chat.engine.tiny import make_tiny_model

OFF, ON = "events off (as shipped)", "events on, a subscriber reading them"


@contextmanager
def subscriber(endpoint: str) -> Iterator[dict[str, int]]:
    """Receive every message the pod publishes and count them (and their events' bytes)."""
    seen = {"messages": 0, "bytes": 0}
    stop = threading.Event()
    context = zmq.Context()
    sub = context.socket(zmq.SUB)
    sub.setsockopt(zmq.SUBSCRIBE, b"kv@")
    sub.connect(endpoint)

    def receive() -> None:
        while not stop.is_set():
            if sub.poll(100):
                frames = sub.recv_multipart()
                seen["messages"] += 1
                seen["bytes"] += len(frames[2])

    thread = threading.Thread(target=receive, daemon=True)
    thread.start()
    try:
        yield seen
    finally:
        stop.set()
        thread.join()
        sub.close(linger=0)
        context.term()


def _free_port() -> int:
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        return int(probe.getsockname()[1])


def main() -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--model", help="model path (default: a freshly built tiny model)")
    parser.add_argument("--clients", default="16", help="clients of the chat workload, per level")
    parser.add_argument("--rounds", type=int, default=1, help="rounds of every level on both servers")
    parser.add_argument("--turns", type=int, default=5)
    parser.add_argument("--max-reply", type=int, default=64, help="cap every reply at this")
    args = parser.parse_args()
    levels = [int(n) for n in args.clients.split(",")]
    work = Path(tempfile.mkdtemp(prefix="qwen-chat-kv-events-"))
    model = args.model or str(make_tiny_model(work / "tiny-model"))
    # One bench key stands for every client: its per-user caps are lifted, as in `make bench`.
    settings = {
        "rate_limit": "1000000/minute",
        "max_user_requests": 1000,
        "max_user_connections": 1000,
        "log_level": "warning",
    }
    endpoint = f"tcp://127.0.0.1:{_free_port()}"
    with ExitStack() as stack:
        for name in ("off", "on"):
            (work / name).mkdir()
        off = stack.enter_context(serve(model, work / "off", **settings))
        on = stack.enter_context(serve(model, work / "on", kv_events_endpoint=endpoint, **settings))
        seen = stack.enter_context(subscriber(endpoint))
        ours = {OFF: off.ws, ON: on.ws}
        rounds = [
            asyncio.run(measure_chat(ours, None, "", levels, args.turns, args.max_reply))
            for _ in range(args.rounds)
        ]
    print(f"the subscriber received {seen['messages']} messages, {seen['bytes']} payload bytes", flush=True)
    print_table(rounds, levels, OFF, ON)


if __name__ == "__main__":
    main()
