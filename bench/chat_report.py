"""The chat workload's and the limits' part of a `make bench` report: targets, Markdown tables and a plot."""

from __future__ import annotations

from pathlib import Path
from typing import Any

OURS, THEIRS = "qwen-chat /ws", "transformers serve"
# The same service with its engine as a thread of the worker (QWEN_CHAT_ENGINE_PROCESS=false).
THREAD = "qwen-chat /ws, engine thread"


def chat_level(result: dict[str, Any], server: str, clients: int) -> dict[str, Any] | None:
    return next((lv for lv in result["chat"] if lv["server"] == server and lv["clients"] == clients), None)


def chat_targets(result: dict[str, Any], tiny: bool) -> list[tuple[str, float | None, float, bool, str]]:
    """(target, measured, goal, higher is better, unit) for the issue's chat-workload and limits targets."""
    rows: list[tuple[str, float | None, float, bool, str]] = []
    raw = result["raw_turn_tokens_per_second"]
    for clients in sorted({lv["clients"] for lv in result["chat"]}):
        ours, theirs = chat_level(result, OURS, clients), chat_level(result, THEIRS, clients)
        if ours is None:
            continue
        if str(clients) in raw and not tiny:
            rows.append(
                (f"chat, {clients} clients: vs the raw forward",
                 ours["tokens_per_second"] / raw[str(clients)], 0.9, True, "x")
            )  # fmt: skip
        if theirs and theirs["tokens_per_second"]:
            goal = 1.5 if tiny and clients >= 16 else 1.0
            rows.append(
                (f"chat, {clients} clients: vs transformers serve", ours["tokens_per_second"]
                 / theirs["tokens_per_second"], goal, True, "x")
            )  # fmt: skip
            if ours["ttft_ms_p50"] is not None and theirs["ttft_ms_p50"]:
                rows.append(
                    (f"chat, {clients} clients: TTFT p50 vs transformers serve's", ours["ttft_ms_p50"]
                     / theirs["ttft_ms_p50"], 1.0, False, "x")
                )  # fmt: skip
        thread = chat_level(result, THREAD, clients)
        if thread and thread["tokens_per_second"] and clients >= 16:
            rows.append(
                (f"chat, {clients} clients: engine process vs engine thread", ours["tokens_per_second"]
                 / thread["tokens_per_second"], 1.2, True, "x")
            )  # fmt: skip
        by_turn = ours["ttft_ms_p50_by_turn"]
        last = max(by_turn, key=int, default=None)
        if last and last != "1" and by_turn.get("1"):
            rows.append(
                (f"chat, {clients} clients: TTFT p50 turn {last} / turn 1", by_turn[last] / by_turn["1"],
                 1.3, False, "x")
            )  # fmt: skip
    sampling = result.get("sampling_cost")
    if sampling is not None:
        name = f"default sampling vs greedy, {sampling['clients']} streams (tokens/s)"
        rows.append((name, sampling["ratio"], 0.95, True, "x"))
    limits = result.get("limits")
    if limits and limits.get("service_prefill_vs_raw") is not None:
        rows.append(("service prefill vs raw forward (same tokens)", limits["service_prefill_vs_raw"], 0.9,
                     True, "x"))  # fmt: skip
    return rows


def chat_markdown(result: dict[str, Any], plot: str) -> list[str]:
    raw = result["raw_turn_tokens_per_second"]
    lines = [
        "### The chat workload (headline)",
        "",
        f"Each client one connection, {result['turns']} turns of its own message length, reply caps from a "
        "seeded spread, the server's default sampling (ours: nothing sent; transformers serve: the same "
        "values sent). Ours twice: out of the box (the engine in a child process of the worker) and with "
        "its engine as a thread of the worker. Raw forward: `model.generate`, greedy, one turn's prompt "
        "and reply sizes batched as many as there are clients.",
        "",
        "| server | clients | turns | tokens/s | raw forward tokens/s | TTFT p50 / p95 (ms) "
        "| TTFT p50 by turn (ms) | ITL p50 / p95 (ms) | errors |",
        "|---|---|---|---|---|---|---|---|---|",
    ]
    for lv in result["chat"]:
        turns = " · ".join(
            f"{v}" for _, v in sorted(lv["ttft_ms_p50_by_turn"].items(), key=lambda kv: int(kv[0]))
        )
        lines.append(
            f"| {lv['server']} | {lv['clients']} | {lv['turns']} | {lv['tokens_per_second']} | "
            f"{raw.get(str(lv['clients']), '')} | {lv['ttft_ms_p50']} / {lv['ttft_ms_p95']} | {turns} | "
            f"{lv['itl_ms_p50']} / {lv['itl_ms_p95']} | {lv['errors']} |"
        )
    limits = result.get("limits")
    if limits:
        lines += [
            "",
            "### The limits, measured in the same run",
            "",
            "| what | measured | fraction of the machine's limit |",
            "|---|---|---|",
            f"| matmul, {result['dtype']} | {limits['matmul_gflops']} GFLOP/s | (the limit) |",
            f"| memory read bandwidth | {limits['memory_gbps']} GB/s | (the limit) |",
            f"| raw forward, prefill of {limits['prefill_tokens']} tokens | {limits['prefill_gflops']} "
            f"GFLOP/s ({limits['prefill_seconds']} s) | {limits['prefill_fraction_of_matmul']} of matmul |",
            f"| raw forward, batch-1 decode | {limits['decode_tokens_per_second']} tokens/s = "
            f"{limits['decode_gbps']} GB/s of weights | {limits['decode_fraction_of_bandwidth']} of "
            "bandwidth |",
            f"| service, same prefill (TTFT of a new {limits['prefill_tokens']}-token prompt) | "
            f"{limits['service_prefill_seconds']} s | {limits['service_prefill_vs_raw']} of the raw "
            "forward's speed |",
        ]
    lines += ["", f"![chat workload: tokens/s by clients, TTFT by turn]({plot})", ""]
    return lines


def draw_chat(result: dict[str, Any], path: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, (left, right) = plt.subplots(1, 2, figsize=(11, 4.2))
    servers = sorted({lv["server"] for lv in result["chat"]})
    for server in servers:
        rows = sorted((lv for lv in result["chat"] if lv["server"] == server), key=lambda lv: lv["clients"])
        (line,) = left.plot(
            [lv["clients"] for lv in rows], [lv["tokens_per_second"] for lv in rows], marker="o", label=server
        )
        for lv in rows:
            turns = sorted(lv["ttft_ms_p50_by_turn"].items(), key=lambda kv: int(kv[0]))
            right.plot(
                [int(t) for t, _ in turns],
                [v for _, v in turns],
                marker="o",
                color=line.get_color(),
                linestyle="-" if lv["clients"] > 1 else ":",
                label=f"{server}, {lv['clients']} clients",
            )
    raw = result["raw_turn_tokens_per_second"]
    if raw:
        xs = sorted(int(c) for c in raw)
        left.plot(xs, [raw[str(c)] for c in xs], color="grey", linestyle=":", marker="x", label="raw forward")
    left.set_xscale("log", base=2)
    left.set_xlabel("clients")
    left.set_ylabel("tokens/s")
    left.set_title("aggregate tokens/s")
    right.set_xlabel("turn")
    right.set_ylabel("ms")
    right.set_yscale("log")
    right.set_title("time to first token p50, by turn")
    for axis in (left, right):
        axis.grid(alpha=0.3)
        axis.legend(fontsize=7)
    fig.suptitle(f"chat workload: {result['model']} on {result['gpu'] or 'CPU'}", fontsize=10)
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)
