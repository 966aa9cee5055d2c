"""The guidellm table of `make bench` (bench/guidellm_run.py): what guidellm's JSON report says, one row per
server, model and number of streams, and the Markdown of it. Pure: reads the report's dicts, imports nothing
of guidellm (which lives in a virtual environment of its own).

A report (`guidellm run --output kind=json`) holds `benchmarks`, one per concurrency level, each with
`config.strategy.streams`, `metrics` (per statistic, a distribution for `successful`, `errored`,
`incomplete` and `total` requests: `mean`, `median`, `percentiles`, ...) and `requests` (per status, each
request's `request_args`, the body sent, and `info.error`).
"""

from __future__ import annotations

import json
from collections import Counter
from typing import Any

# The columns of a row that come from a distribution: (row key, metric, requests, statistic). Output tokens/s
# is guidellm's own throughput (its console's "Output Tokens Per Sec"): over all requests of the level.
_STATISTICS = (
    ("output_tokens_per_second", "output_tokens_per_second", "total", "mean"),
    ("ttft_ms_p50", "time_to_first_token_ms", "successful", "median"),
    ("ttft_ms_p95", "time_to_first_token_ms", "successful", "p95"),
    ("itl_ms_p50", "inter_token_latency_ms", "successful", "median"),
    ("itl_ms_p95", "inter_token_latency_ms", "successful", "p95"),
    ("latency_s_p50", "request_latency", "successful", "median"),
    ("prompt_tokens_mean", "prompt_token_count", "successful", "mean"),
    ("output_tokens_mean", "output_token_count", "successful", "mean"),
)
# A prompt in a recorded body is cut to this many characters.
PROMPT_CHARS = 60


def _statistic(distribution: dict[str, Any], name: str) -> float | None:
    """`name` of one distribution (`mean`, `median` or a percentile `p95`), None when it counted nothing."""
    if not distribution or not distribution.get("count"):
        return None
    value = distribution["percentiles"][name] if name.startswith("p") else distribution[name]
    return None if value is None else float(value)


def level(benchmark: dict[str, Any], server: str, model: str) -> dict[str, Any]:
    """One row: a benchmark (one concurrency level) of a guidellm report."""
    metrics = benchmark["metrics"]
    totals = metrics["request_totals"]
    row: dict[str, Any] = {
        "server": server,
        "model": model,
        "streams": benchmark["config"]["strategy"]["streams"],
        "ok": totals["successful"],
        "errored": totals["errored"],
        "incomplete": totals["incomplete"],
        "seconds": round(benchmark["duration"], 1),
    }
    for key, metric, status, name in _STATISTICS:
        value = _statistic(metrics[metric][status], name)
        row[key] = None if value is None else round(value, 2)
    return row


def levels(report: dict[str, Any], server: str, model: str) -> list[dict[str, Any]]:
    """Every benchmark of a report, by streams."""
    rows = [level(benchmark, server, model) for benchmark in report["benchmarks"]]
    return sorted(rows, key=lambda row: row["streams"])


def _requests(report: dict[str, Any], status: str) -> list[dict[str, Any]]:
    return [r for benchmark in report["benchmarks"] for r in benchmark["requests"].get(status) or []]


def _cut(text: str) -> str:
    return text if len(text) <= PROMPT_CHARS else text[:PROMPT_CHARS] + "..."


def _shortened(body: dict[str, Any]) -> dict[str, Any]:
    """`body` with every prompt text (a message's content or its text parts, or `prompt`) cut."""
    for message in body.get("messages", []):
        content = message.get("content")
        if isinstance(content, str):
            message["content"] = _cut(content)
        elif isinstance(content, list):
            for part in content:
                if isinstance(part.get("text"), str):
                    part["text"] = _cut(part["text"])
    if isinstance(body.get("prompt"), str):
        body["prompt"] = _cut(body["prompt"])
    return body


def request_body(report: dict[str, Any]) -> dict[str, Any] | None:
    """The body of the report's first recorded request, its prompt texts cut to PROMPT_CHARS."""
    for status in ("successful", "errored", "incomplete"):
        for request in _requests(report, status):
            if request.get("request_args"):
                return _shortened(json.loads(request["request_args"])["body"])
    return None


def error_kind(message: str) -> str:
    """A message's first line: guidellm records an exception's repr, its line breaks escaped (`\\n`), and
    what follows the first (the reply's text, say) differs from request to request."""
    return message.split("\\n", 1)[0].splitlines()[0] if message.strip() else "no error recorded"


def errors(report: dict[str, Any]) -> dict[str, int]:
    """How many errored requests gave each kind of error (`error_kind`)."""
    seen = Counter(
        error_kind(str((r.get("info") or {}).get("error") or "")) for r in _requests(report, "errored")
    )
    return dict(seen.most_common())


def _cell(value: float | None, digits: int = 1) -> str:
    return "-" if value is None else f"{value:,.{digits}f}"


def markdown(rows: list[dict[str, Any]]) -> list[str]:
    """The table: one line per server, model and streams."""
    lines = [
        "| server | model | streams | requests ok / errored / incomplete | output tok/s "
        "| TTFT p50 / p95 (ms) | ITL p50 / p95 (ms) | request latency p50 (s) | output tokens per request |",
        "|---|---|---|---|---|---|---|---|---|",
    ]
    for row in rows:
        cells = [
            row["server"],
            row["model"],
            str(row["streams"]),
            f"{row['ok']} / {row['errored']} / {row['incomplete']}",
            _cell(row["output_tokens_per_second"]),
            f"{_cell(row['ttft_ms_p50'], 0)} / {_cell(row['ttft_ms_p95'], 0)}",
            f"{_cell(row['itl_ms_p50'])} / {_cell(row['itl_ms_p95'])}",
            _cell(row["latency_s_p50"], 2),
            _cell(row["output_tokens_mean"]),
        ]
        lines.append("| " + " | ".join(cells) + " |")
    return lines
