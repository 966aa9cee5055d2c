"""guidellm's JSON report read into the guidellm table of `make bench` (bench/guidellm_report.py), on an excerpt
of a recorded report: guidellm 0.8.1 against `transformers serve` on the tiny model, 16 streams."""

from __future__ import annotations

import json
from typing import Any

from bench.guidellm_report import PROMPT_CHARS, errors, levels, markdown, request_body

PROMPT = "2 4 m0 Place reveal marriage experience myself discussion account. Here rather nor concern yes."
ERROR = (
    'ValueError("Streaming response returned an error: json parser could not parse region as JSON.\\nContent: '
    "'to requestou system count 345 count about'\\nError: Expecting value: line 1 column 1 (char 0)\")"
)
# Only the keys the table reads; the values as recorded (rounded).
RECORDED = """{
  "config": {"strategy": {"type_": "concurrent", "max_concurrency": 16, "streams": 16}},
  "duration": 0.496,
  "metrics": {
    "request_totals": {"successful": 15, "errored": 1, "incomplete": 0, "total": 16},
    "output_tokens_per_second": {"total": {"count": 1001, "mean": 2019.565, "median": 1445.315,
      "percentiles": {"p50": 1445.315, "p95": 5758.77}}},
    "time_to_first_token_ms": {"successful": {"count": 15, "mean": 146.102, "median": 152.701,
      "percentiles": {"p50": 152.701, "p95": 226.803}}},
    "inter_token_latency_ms": {"successful": {"count": 945, "mean": 4.712, "median": 4.535,
      "percentiles": {"p50": 4.535, "p95": 6.567}}},
    "request_latency": {"successful": {"count": 15, "mean": 0.463, "median": 0.462,
      "percentiles": {"p50": 0.462, "p95": 0.494}}},
    "prompt_token_count": {"successful": {"count": 15, "mean": 153.0, "median": 153.0,
      "percentiles": {"p50": 153.0, "p95": 153.0}}},
    "output_token_count": {"successful": {"count": 15, "mean": 64.0, "median": 64.0,
      "percentiles": {"p50": 64.0, "p95": 64.0}}}
  },
  "requests": {"successful": [], "errored": [], "incomplete": []}
}"""


def recorded() -> dict[str, Any]:
    benchmark: dict[str, Any] = json.loads(RECORDED)
    args = {"stream": True, "body": {"model": "m", "max_completion_tokens": 64, "messages": [
        {"role": "user", "content": [{"type": "text", "text": PROMPT}]}]}}  # fmt: skip
    benchmark["requests"]["successful"] = [{"request_args": json.dumps(args), "info": {"error": None}}]
    benchmark["requests"]["errored"] = [{"request_args": None, "info": {"error": ERROR}}]
    return benchmark


def all_errored(streams: int) -> dict[str, Any]:
    """A level whose every request errored: guidellm's distributions of nothing (count 0, zeros)."""
    benchmark = recorded()
    benchmark["config"]["strategy"]["streams"] = streams
    benchmark["metrics"]["request_totals"] = {"successful": 0, "errored": 4, "incomplete": 0, "total": 4}
    for metric in benchmark["metrics"].values():
        for distribution in metric.values():
            if isinstance(distribution, dict):
                distribution.update(count=0, mean=0.0, median=0.0, percentiles={"p50": 0.0, "p95": 0.0})
    benchmark["requests"]["successful"] = []
    return benchmark


def test_each_level_is_a_row_of_guidellm_numbers_in_order_of_streams() -> None:
    report = {"benchmarks": [recorded(), all_errored(1)]}
    one, sixteen = levels(report, "transformers serve", "tiny")
    assert sixteen == {
        "server": "transformers serve", "model": "tiny", "streams": 16, "ok": 15, "errored": 1, "incomplete": 0,
        "seconds": 0.5, "output_tokens_per_second": 2019.57, "ttft_ms_p50": 152.7, "ttft_ms_p95": 226.8,
        "itl_ms_p50": 4.54, "itl_ms_p95": 6.57, "latency_s_p50": 0.46, "prompt_tokens_mean": 153.0,
        "output_tokens_mean": 64.0,
    }  # fmt: skip
    # Nothing completed: no latency at all, rather than guidellm's zeros.
    assert one["streams"] == 1 and one["ok"] == 0 and one["errored"] == 4
    assert one["ttft_ms_p50"] is None and one["output_tokens_per_second"] is None
    table = markdown([one, sixteen])
    assert table[2] == "| transformers serve | tiny | 1 | 0 / 4 / 0 | - | - / - | - / - | - | - |"
    assert table[3] == (
        "| transformers serve | tiny | 16 | 15 / 1 / 0 | 2,019.6 | 153 / 227 | 4.5 / 6.6 | 0.46 | 64.0 |"
    )


def test_the_body_sent_is_recorded_with_its_prompt_cut_and_errors_counted_by_kind() -> None:
    report = {"benchmarks": [recorded(), recorded()]}
    body = request_body(report)
    assert body is not None
    assert body["messages"][0]["content"][0]["text"] == PROMPT[:PROMPT_CHARS] + "..."
    assert body["max_completion_tokens"] == 64
    # One kind, however the reply's text in the message differs.
    assert errors(report) == {
        'ValueError("Streaming response returned an error: json parser could not parse region as JSON.': 2
    }
    assert request_body({"benchmarks": [all_errored(1)]}) is None  # errored requests record no body
