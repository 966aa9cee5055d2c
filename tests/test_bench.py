"""`make bench` must keep working: the suite, end to end at a small size (numbers are not checked here)."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

from tests.support.chart_tools import REPO


def test_the_benchmark_suite_runs_end_to_end_and_reports(tmp_path: Path, tiny_model_dir: Path) -> None:
    report = tmp_path / "BENCHMARKS.md"
    report.write_text(
        "# Benchmarks\n\nIntro kept.\n\n<!-- bench:other:start -->\nkept\n<!-- bench:other:end -->\n"
    )
    run = subprocess.run(
        [sys.executable, "bench/suite.py", "--model", str(tiny_model_dir), "--concurrency", "1,2",
         "--tokens", "8", "--label", "ci", "--out-dir", str(tmp_path), "--benchmarks", str(report)],
        cwd=REPO, capture_output=True, text=True, timeout=280, check=False,
    )  # fmt: skip
    assert run.returncode == 0, run.stdout[-3000:] + run.stderr[-3000:]
    (result_file,) = tmp_path.glob("*-ci.json")
    result = json.loads(result_file.read_text())
    servers = {(level["server"], level["concurrency"]) for level in result["levels"]}
    for server in ("qwen-chat /ws", "qwen-chat /v1", "transformers serve"):
        assert {(server, 1), (server, 2)} <= servers, servers
    for level in result["levels"]:
        assert level["errors"] == 0 and level["tokens"] > 0 and level["ttft_ms_p50"] is not None, level
        assert level["health_probes"] > 0
    assert result["generate_tokens_per_second"] > 0 and result["worker_rss_mib"]
    assert result_file.with_suffix(".png").stat().st_size > 10_000
    text = report.read_text()
    assert "Intro kept." in text and "kept\n<!-- bench:other:end -->" in text
    assert "<!-- bench:ci:start -->" in text and "| transformers serve | 2 |" in text
    assert result_file.with_suffix(".png").name in text
