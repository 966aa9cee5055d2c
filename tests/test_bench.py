"""`make bench` must keep working: the suite, end to end at a small size (numbers are not checked here), and
the other benchmarks, each run from the repository root as `python -m bench.<name>`."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

from tests.support.chart_tools import REPO

# Every benchmark with a command line (the rest are modules the suite imports).
SCRIPTS = [
    "suite", "fairness", "tracing_cost", "prompt_encoding", "startup", "single_stream", "openai_fields",
    "machine_limits", "grammar_cost", "sampler_cost", "shaped_model", "hybrid", "guidellm_run", "device.wheels",
    "step_overhead", "prefix_cache", "kv_events_cost",
]  # fmt: skip


def test_every_benchmark_answers_help_under_its_module_name() -> None:
    """One interpreter runs each `python -m bench.<name> --help`: the package imports as a package."""
    code = (
        "import runpy, sys\n"
        f"for name in {SCRIPTS!r}:\n"
        "    sys.argv = [name, '--help']\n"
        "    try:\n"
        "        runpy.run_module(f'bench.{name}', run_name='__main__', alter_sys=True)\n"
        "    except SystemExit as done:\n"
        "        assert done.code in (0, None), (name, done.code)\n"
        "    else:\n"
        "        raise AssertionError(f'{name} ran instead of printing its help')\n"
        "    print('helped', name, flush=True)\n"
    )
    run = subprocess.run(
        [sys.executable, "-c", code], cwd=REPO, capture_output=True, text=True, timeout=120, check=False
    )
    assert run.returncode == 0, run.stdout[-3000:] + run.stderr[-3000:]
    assert [line.split()[1] for line in run.stdout.splitlines() if line.startswith("helped ")] == SCRIPTS
    assert "usage:" in run.stdout


def test_the_benchmark_suite_runs_end_to_end_and_reports(tmp_path: Path, tiny_model_dir: Path) -> None:
    report = tmp_path / "BENCHMARKS.md"
    report.write_text(
        "# Benchmarks\n\nIntro kept.\n\n<!-- bench:other:start -->\nkept\n<!-- bench:other:end -->\n"
    )
    run = subprocess.run(
        [sys.executable, "-m", "bench.suite", "--model", str(tiny_model_dir), "--concurrency", "1,2",
         "--tokens", "8", "--chat-clients", "1,2", "--turns", "2", "--max-reply", "8", "--label", "ci", "--out-dir", str(tmp_path), "--benchmarks", str(report)],
        cwd=REPO, capture_output=True, text=True, timeout=420, check=False,
    )  # fmt: skip
    assert run.returncode == 0, run.stdout[-3000:] + run.stderr[-3000:]
    (result_file,) = tmp_path.glob("*-ci.json")
    result = json.loads(result_file.read_text())
    servers = {(level["server"], level["concurrency"]) for level in result["levels"]}
    for server in ("qwen-chat /ws", "qwen-chat /v1", "qwen-chat /ws, engine thread", "transformers serve"):
        assert {(server, 1), (server, 2)} <= servers, servers
    for level in result["levels"]:
        assert level["errors"] == 0 and level["tokens"] > 0 and level["ttft_ms_p50"] is not None, level
        assert level["health_probes"] > 0
    assert result["generate_tokens_per_second"] > 0 and result["worker_rss_mib"]
    # The headline: multi-turn conversations on every server (ours with its engine in a child process and
    # as a thread, side by side), time to first token for every turn.
    chat = {(level["server"], level["clients"]): level for level in result["chat"]}
    ours = ("qwen-chat /ws", "qwen-chat /ws, engine thread")
    assert set(chat) == {(s, n) for s in (*ours, "transformers serve") for n in (1, 2)}
    for level in chat.values():
        assert level["errors"] == 0 and level["turns"] == 2 * level["clients"], level
        assert set(level["ttft_ms_p50_by_turn"]) == {"1", "2"} and level["tokens"] > 0
    assert set(result["raw_turn_tokens_per_second"]) == {"1", "2"}
    limits = result["limits"]
    assert limits["matmul_gflops"] > 0 and limits["memory_gbps"] > 0
    assert limits["prefill_fraction_of_matmul"] > 0 and limits["decode_fraction_of_bandwidth"] > 0
    assert limits["service_prefill_vs_raw"] > 0
    assert "sampling_cost" in result and any("turn 2 / turn 1" in t["target"] for t in result["targets"])
    fields = result["openai_fields"]  # structured outputs and tools, one table
    assert fields["constrained_valid"] == fields["replies"] > 0 and fields["constrained_ratio"] > 0
    assert fields["tools_decode_ratio"] > 0 and "Structured outputs and tools" in report.read_text()
    assert result_file.with_suffix(".png").stat().st_size > 10_000
    assert result_file.with_name(f"{result_file.stem}-chat.png").stat().st_size > 10_000
    text = report.read_text()
    assert "Intro kept." in text and "kept\n<!-- bench:other:end -->" in text
    assert "<!-- bench:ci:start -->" in text and "| transformers serve | 2 |" in text
    assert "### The chat workload (headline)" in text and "### The limits" in text
    assert result_file.with_suffix(".png").name in text


def test_the_fairness_benchmark_shows_the_caps_at_work(tiny_model_dir: Path) -> None:
    run = subprocess.run(
        [sys.executable, "-m", "bench.fairness", "--model", str(tiny_model_dir), "--flood", "20", "--chats", "1",
         "--tokens", "16"],
        cwd=REPO, capture_output=True, text=True, timeout=300, check=False,
    )  # fmt: skip
    assert run.returncode == 0, run.stdout[-3000:] + run.stderr[-3000:]
    rows = {
        line.split(" | ")[0].strip("| "): line for line in run.stdout.splitlines() if line.startswith("| ")
    }
    assert set(rows) >= {"alone", "flood, default caps", "flood, caps lifted"}, run.stdout
    assert "{'done': 1}" in rows["alone"] and "{'done': 1}" in rows["flood, default caps"], run.stdout
    assert "closed 1013 4" in rows["flood, default caps"], "20 sockets, 16 allowed"
    assert "1013" not in rows["flood, caps lifted"], run.stdout


def test_the_hybrid_benchmark_reports_its_targets_and_the_prefilled_tokens(tmp_path: Path) -> None:
    """`python -m bench.hybrid` at a small size, on the tiny Qwen3.5 (the real run builds Qwen3.5-0.8B's shape):
    its section lands in BENCHMARKS.md with every target row, and a conversation's later turns prefill less
    than their prompt (kept states)."""
    from qwen_chat.engine.tiny import make_tiny_model

    model = make_tiny_model(tmp_path / "model", family="qwen3_5")
    report = tmp_path / "BENCHMARKS.md"
    run = subprocess.run(
        [sys.executable, "-m", "bench.hybrid", "--model", str(model), "--clients", "2", "--turns", "3",
         "--max-reply", "24", "--tokens", "8", "--out-dir", str(tmp_path), "--benchmarks", str(report)],
        cwd=REPO, capture_output=True, text=True, timeout=300, check=False,
    )  # fmt: skip
    assert run.returncode == 0, run.stdout[-3000:] + run.stderr[-3000:]
    section = report.read_text()
    for row in (
        "one request at a time",
        "on 2 rows",
        "turn 5's time to first token",
        "history resent",
        "16 streams",
    ):
        assert row in section, section
    result = json.loads(next(tmp_path.glob("*-hybrid.json")).read_text())
    last = result["v1_alone"][-1]
    assert last["turn"] == 3 and last["prefilled"] < last["prompt_tokens"], result["v1_alone"]


def test_the_tracing_cost_benchmark_compares_traces_off_and_on(tiny_model_dir: Path) -> None:
    run = subprocess.run(
        [sys.executable, "-m", "bench.tracing_cost", "--model", str(tiny_model_dir), "--clients", "2",
         "--rounds", "1", "--turns", "1", "--max-reply", "4"],
        cwd=REPO, capture_output=True, text=True, timeout=300, check=False,
    )  # fmt: skip
    assert run.returncode == 0, run.stdout[-3000:] + run.stderr[-3000:]
    rows = [line.split(" | ") for line in run.stdout.splitlines() if line.startswith("| 2 |")]
    assert [row[1] for row in rows] == ["traces off (as shipped)", "traces on, every chat exported"]
    assert float(rows[1][-1].strip(" |")) > 0, "on / off"
    # The traced server's spans reached the sink; the other's could not have (it has no endpoint).
    (exports,) = [line for line in run.stdout.splitlines() if line.startswith("the OTLP sink received")]
    assert not exports.startswith("the OTLP sink received 0 "), exports


def test_the_prompt_encoding_benchmark_agrees_with_the_template() -> None:
    run = subprocess.run(
        [sys.executable, "-m", "bench.prompt_encoding", "--rounds", "1"],
        cwd=REPO, capture_output=True, text=True, timeout=300, check=False,
    )  # fmt: skip
    assert run.returncode == 0, run.stdout[-3000:] + run.stderr[-3000:]  # every round checks the three agree
    rows = [
        line.split(" | ") for line in run.stdout.splitlines() if line.startswith("| ") and "---" not in line
    ]
    assert [row[0].strip("| ") for row in rows[1:]] == ["1 turn", "8 turns", "32 turns", "8 turns, 4 tools"]
    assert all(float(row[-1].strip(" |")) > 0 for row in rows[1:])
