"""The report of `make bench`: the targets, the run's section of BENCHMARKS.md (replacing the section of
the same key, other sections kept), the result JSON and the greedy micro-benchmark's plot next to it. The
chat workload's own tables and plot are bench/chat_report.py's, the structured outputs' table is
bench/openai_fields.py's.
"""

from __future__ import annotations

import datetime as dt
import json
import os
import platform
from pathlib import Path
from typing import Any

from bench.chat_report import THREAD, chat_markdown, chat_targets, draw_chat
from bench.openai_fields import markdown as fields_markdown
from bench.openai_fields import targets as fields_targets


def _level(result: dict[str, Any], server: str, concurrency: int) -> dict[str, Any] | None:
    return next(
        (lv for lv in result["levels"] if lv["server"] == server and lv["concurrency"] == concurrency), None
    )


def target_row(
    name: str, value: float | None, goal: float, higher_is_better: bool, unit: str
) -> dict[str, Any]:
    met = None if value is None else (value >= goal if higher_is_better else value <= goal)
    return {"target": name, "measured": None if value is None else round(value, 2), "goal": goal,
            "unit": unit, "higher_is_better": higher_is_better, "met": met}  # fmt: skip


def targets(result: dict[str, Any]) -> list[dict[str, Any]]:
    """The issue's targets of the greedy micro-benchmark against this run (ratios within the run: the
    machine is shared and noisy)."""
    one = _level(result, "qwen-chat /ws", 1)
    sixteen = _level(result, "qwen-chat /ws", 16)
    theirs16 = _level(result, "transformers serve", 16)
    rows = []

    def row(name: str, value: float | None, goal: float, higher_is_better: bool, unit: str) -> None:
        rows.append(target_row(name, value, goal, higher_is_better, unit))

    if one:
        row(
            "one /ws stream vs model.generate",
            one["tokens_per_second"] / result["generate_tokens_per_second"],
            0.9,
            True,
            "x",
        )
    if one and sixteen:
        row(
            "16 /ws streams vs one stream (aggregate)",
            sixteen["tokens_per_second"] / one["tokens_per_second"],
            5.0,
            True,
            "x",
        )
    if sixteen and theirs16:
        row(
            "16 /ws streams vs transformers serve at 16",
            sixteen["tokens_per_second"] / theirs16["tokens_per_second"],
            1.5,
            True,
            "x",
        )
    if sixteen:
        row("time to first token p50 at 16 streams", sixteen["ttft_ms_p50"], 50, False, "ms")
        row("/livez p99 during the 16-stream load", sixteen["health_ms_p99"], 50, False, "ms")
    sixty_four = _level(result, "qwen-chat /ws", 64)
    if sixty_four:
        row("/livez p99 during the 64-stream load", sixty_four["health_ms_p99"], 20, False, "ms")
    thread_one = _level(result, THREAD, 1)
    if thread_one:
        row(
            "one /ws stream, engine thread, vs model.generate",
            thread_one["tokens_per_second"] / result["generate_tokens_per_second"],
            0.9,
            True,
            "x",
        )
    return rows


def markdown(result: dict[str, Any], plot: str, chat: list[str]) -> str:
    where = result["gpu"] or f"CPU, {result['cpu_cores']} cores"
    rss = ", ".join(f"{v:.0f} MiB" for v in result["worker_rss_mib"])
    lines = [
        f"Run {result['date']} on `{result['host']}` ({where}); model: {result['model']}; "
        f"engine `{result['engine']}`, {result['dtype']}, {result['workers']} worker(s), out of the box; "
        f"{result['wall_seconds']} s in all. Resident memory per worker (with its engine process) after the "
        f"load: {rss}. CPU time over the run: "
        + "; ".join(
            f"{name}: workers {c['workers']} s, engine processes {c['engine_processes']} s"
            for name, c in result["cpu_seconds"].items()
        )
        + ".",
        "",
        *chat,
        "### Targets",
        "",
        "| target | measured | goal | met |",
        "|---|---|---|---|",
    ]
    for t in result["targets"]:
        op = ">=" if t.get("higher_is_better", t["unit"] == "x") else "<="
        met = {True: "yes", False: "**no**", None: "n/a"}[t["met"]]
        lines.append(
            f"| {t['target']} | {t['measured']} {t['unit']} | {op} {t['goal']} {t['unit']} | {met} |"
        )
    lines += [
        "",
        "### Greedy micro-benchmark (second table)",
        "",
        f"One short prompt, {result['tokens_per_reply']} greedy tokens per reply (plus one level with the "
        f"default sampling). `model.generate` in-process, one stream: "
        f"**{result['generate_tokens_per_second']} tokens/s**.",
        "",
        "| server | clients | chats | tokens/s | TTFT p50 / p95 (ms) | ITL p50 / p95 (ms) "
        "| health p99 (ms) | errors |",
        "|---|---|---|---|---|---|---|---|",
    ]
    for lv in result["levels"]:
        lines.append(
            f"| {lv['server']} | {lv['concurrency']} | {lv['chats']} | {lv['tokens_per_second']} | "
            f"{lv['ttft_ms_p50']} / {lv['ttft_ms_p95']} | {lv['itl_ms_p50']} / {lv['itl_ms_p95']} | "
            f"{lv['health_ms_p99']} | {lv['errors']} |"
        )
    lines += ["", f"![tokens/s and time to first token against concurrency]({plot})"]
    return "\n".join(lines)


def update_benchmarks(path: Path, key: str, section: str) -> None:
    """Replace this device's section of BENCHMARKS.md (other devices' sections stay)."""
    start, end = f"<!-- bench:{key}:start -->", f"<!-- bench:{key}:end -->"
    text = path.read_text() if path.exists() else "# Benchmarks\n"
    block = f"{start}\n## {key}\n\n{section}\n{end}"
    if start in text:
        before, rest = text.split(start, 1)
        text = before + block + rest.split(end, 1)[1]
    else:
        text = text.rstrip() + "\n\n" + block + "\n"
    path.write_text(text)


def save(result: dict[str, Any], out: Path, benchmarks: Path, key: str, section: str) -> None:
    """A section-only benchmark's run: `section` printed and written as BENCHMARKS.md's section `key`,
    `result` as JSON at `out`."""
    print(section)
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(json.dumps(result, indent=2) + "\n")
    update_benchmarks(benchmarks, key, section)
    print(f"wrote {out} and {benchmarks}")


def draw(result: dict[str, Any], path: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    servers = sorted({lv["server"] for lv in result["levels"]})
    fig, (left, right) = plt.subplots(1, 2, figsize=(11, 4.2))
    for server in servers:
        rows = sorted(
            (lv for lv in result["levels"] if lv["server"] == server), key=lambda lv: lv["concurrency"]
        )
        xs = [lv["concurrency"] for lv in rows]
        (line,) = left.plot(xs, [lv["tokens_per_second"] for lv in rows], marker="o", label=server)
        color = line.get_color()  # one colour per server on both sides
        right.plot(xs, [lv["ttft_ms_p50"] for lv in rows], marker="o", color=color, label=f"{server} p50")
        right.plot(
            xs,
            [lv["ttft_ms_p95"] for lv in rows],
            marker="x",
            linestyle="--",
            color=color,
            label=f"{server} p95",
        )
    left.axhline(
        result["generate_tokens_per_second"], color="grey", linestyle=":", label="model.generate, 1 stream"
    )
    for axis, title, unit in ((left, "aggregate tokens/s", "tokens/s"), (right, "time to first token", "ms")):
        axis.set_xscale("log", base=2)
        axis.set_xticks([lv for lv in sorted({lv["concurrency"] for lv in result["levels"]})])
        axis.get_xaxis().set_major_formatter(matplotlib.ticker.ScalarFormatter())
        axis.set_xlabel("concurrent clients")
        axis.set_ylabel(unit)
        axis.set_title(title)
        axis.grid(alpha=0.3)
        axis.legend(fontsize=7)
    right.set_yscale("log")
    fig.suptitle(
        f"{result['model']} on {result['gpu'] or 'CPU'}, {result['tokens_per_reply']} tokens per reply",
        fontsize=10,
    )
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)


def all_targets(result: dict[str, Any], tiny: bool, fields: dict[str, Any] | None) -> list[dict[str, Any]]:
    """The greedy micro-benchmark's targets, the chat workload's and the limits', then (when measured) the
    structured outputs' and tools'."""
    rows = targets(result) + [target_row(*row) for row in chat_targets(result, tiny)]
    if fields is not None:
        rows += [target_row(*row) for row in fields_targets(fields)]
    return rows


def write(
    result: dict[str, Any],
    out_dir: Path,
    benchmarks: Path,
    key: str,
    label: str,
    fields: dict[str, Any] | None,
) -> None:
    """out_dir/<date>-<host>-<device>[-<label>].json with its two plots (.png and -chat.png) next to it,
    and this run's section of `benchmarks` under `key`; the section is printed too."""
    stem = f"{dt.date.today()}-{platform.node()}-{result['device']}{'-' + label if label else ''}"
    out = out_dir / f"{stem}.json"
    out.parent.mkdir(exist_ok=True)
    out.write_text(json.dumps(result, indent=2) + "\n")
    plot, chat_plot = out.with_suffix(".png"), out.with_name(f"{stem}-chat.png")
    draw(result, plot)
    draw_chat(result, chat_plot)
    chat_lines = chat_markdown(result, os.path.relpath(chat_plot, benchmarks.parent))
    if fields is not None:
        chat_lines = [*chat_lines, "", *fields_markdown(fields)]
    section = markdown(result, os.path.relpath(plot, benchmarks.parent), chat_lines)
    print(section)
    update_benchmarks(benchmarks, key, section)
    print(f"wrote {out}, {plot}, {chat_plot} and {benchmarks}")
