"""What publishing KV-cache events costs: the chat workload (bench/chat_workload.py: multi-turn conversations
over `/ws`, the server's default sampling) against two `qwen-chat serve`s side by side, one as it ships
(no events) and one publishing them (QWEN_CHAT_KV_EVENTS_ENDPOINT) to a ZMQ subscriber in this process that
reads every message, as llm-d's precise prefix-cache scorer would. The servers take turns at each level, in
reverse order at every other round (bench/tracing_cost.py); each figure is the median over --rounds.

    .venv/bin/python -m bench.kv_events_cost [--model PATH] [--clients 16] [--rounds 1] [--max-reply 64]
"""

from __future__ import annotations

import threading
from collections.abc import Iterator
from contextlib import ExitStack, contextmanager

import zmq

from bench.on_off import arguments, levels, print_table, run_on_off
from bench.serving import free_port

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


def main() -> None:
    args = arguments(__doc__, clients="16", rounds=1, turns=5)
    endpoint = f"tcp://127.0.0.1:{free_port()}"
    with ExitStack() as stack:
        seen = stack.enter_context(subscriber(endpoint))
        rounds = run_on_off(stack, args, (OFF, ON), {"kv_events_endpoint": endpoint})
    print(f"the subscriber received {seen['messages']} messages, {seen['bytes']} payload bytes", flush=True)
    print_table(rounds, levels(args), OFF, ON)


if __name__ == "__main__":
    main()
