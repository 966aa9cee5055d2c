"""The guidellm section of `make bench`: guidellm, the benchmark client vLLM's docs recommend, against our
server and against `transformers serve --continuous-batching`, side by side on 127.0.0.1.

guidellm (pinned `GUIDELLM`) lives in a virtual environment of its own, `.tools/guidellm` (it needs torch,
datasets and more, none of which belong in the project's locked .venv), installed on first use with
`pip install guidellm==GUIDELLM --constraint constraints-cpu.txt`, so that torch stays the CPU wheel
(`TORCH_FIND_LINKS`, as `make lock` reads it, names where that wheel lies). The hub is never asked: its
tokenizer for synthetic prompts is the model folder's own (`HF_HUB_OFFLINE=1`, `HF_DATASETS_OFFLINE=1`).

For each model (the tiny model and random weights shaped like Qwen2.5-0.5B, as the other benchmarks build
them; `--model PATH` for one other), both servers start side by side and each level (a concurrent profile
at `--streams`, 1 and 16) is one `guidellm run` per server, the servers taking turns, in reverse order at
every other level, so that the machine's drift falls on both. Synthetic prompts of `--prompt-tokens`,
replies of `--output-tokens`, a bounded number of requests per level (`REQUESTS`), at most `--max-seconds`
each. Streaming /v1/chat/completions with guidellm's default body: `max_completion_tokens`, `stop: null`,
`ignore_eos: true` (every reply exactly its tokens) and `stream_options.continuous_usage_stats`, no sampling
field, so ours samples with its defaults. `transformers serve` refuses that body (422, "Unexpected fields in
the request: {'ignore_eos'}"), so it gets guidellm's other body, the reply capped by the backend's
`max_tokens` (no `stop`, no `ignore_eos`; a reply may end early at an end of turn: the table's output tokens
per request says whether any did), and our default temperature and top_p (`extras`), as the chat workload
sends them (it samples greedily without; it refuses `repetition_penalty`). Our server runs out of the box
but for the per-user limits (one bench key stands for every stream), its output logged to the work folder;
errored requests are counted and their messages reported, never retried.

It prints the table, writes bench/results/<date>-<host>-<label>.json (rows, the bodies sent, the errors, the
workload) and rewrites its section of BENCHMARKS.md. guidellm's own reports and logs stay in the work
folder (`--keep` to keep it).

    .venv/bin/python -m bench.guidellm_run [--model PATH] [--streams 1,16] [--prompt-tokens 128]
        [--output-tokens 64] [--max-seconds 300] [--label cpu-guidellm]
"""

from __future__ import annotations

import argparse
import datetime as dt
import json
import os
import platform
import shlex
import shutil
import subprocess
import sys
import tempfile
import time
from contextlib import ExitStack
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import httpx

from bench.guidellm_report import errors, levels, markdown, request_body
from bench.report import save
from bench.serving import KEY, serve, spawn, stop
from bench.shaped_model import make_shaped_model
from bench.transformers_serve import cache_pages, transformers_serve
from qwen_chat.sampling_params import DEFAULTS

HERE = Path(__file__).parent
ROOT = HERE.parent
GUIDELLM = "0.8.1"
VENV = ROOT / ".tools" / "guidellm"
SHAPE = "qwen2.5-0.5b"
# Requests per stream at each level, and at least: the tiny model answers in a blink, the 0.5B shape at 4 to 8
# tokens/s alone and 20 to 30 at 16 streams on 2 cores, so there one request per stream (at least 4).
REQUESTS = {"tiny": 16, "sized": 1}
MIN_REQUESTS = {"tiny": 16, "sized": 4}
OFFLINE = {"HF_HUB_OFFLINE": "1", "HF_DATASETS_OFFLINE": "1", "TRANSFORMERS_OFFLINE": "1"}


def parse_args() -> argparse.Namespace:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--model", help="one model path instead of the tiny model and the 0.5B shape")
    parser.add_argument("--streams", default="1,16", help="guidellm's concurrent streams, one level each")
    parser.add_argument("--prompt-tokens", type=int, default=128, help="synthetic prompt length")
    parser.add_argument("--output-tokens", type=int, default=64, help="reply length")
    parser.add_argument("--max-seconds", type=float, default=300, help="at most this long per level")
    parser.add_argument("--skip-transformers-serve", action="store_true")
    parser.add_argument("--venv", type=Path, default=VENV, help="guidellm's virtual environment")
    parser.add_argument("--keep", action="store_true", help="keep the work folder (guidellm's reports)")
    parser.add_argument("--label", default="cpu-guidellm", help="the result file's and section's name")
    parser.add_argument("--out-dir", type=Path, default=HERE / "results", help="where the JSON goes")
    parser.add_argument("--benchmarks", type=Path, default=ROOT / "BENCHMARKS.md")
    return parser.parse_args()


def guidellm_version(venv: Path) -> str | None:
    """The guidellm installed in `venv`, None when none is."""
    python = venv / "bin" / "python"
    if not python.exists():
        return None
    found = subprocess.run(
        [str(python), "-c", "import importlib.metadata as m; print(m.version('guidellm'))"],
        capture_output=True,
        text=True,
        check=False,
    )
    return found.stdout.strip() if found.returncode == 0 else None


def install_command(venv: Path) -> list[str]:
    """pip's command line for guidellm in `venv`: pinned, torch held to constraints-cpu.txt's CPU wheel."""
    links = [f"--find-links={where}" for where in os.environ.get("TORCH_FIND_LINKS", "").split()]
    return [
        str(venv / "bin" / "python"), "-m", "pip", "install", "--quiet", f"guidellm=={GUIDELLM}",
        "--constraint", str(ROOT / "constraints-cpu.txt"), *links,
    ]  # fmt: skip


def ensure_guidellm(venv: Path) -> Path:
    """`venv`'s guidellm executable, the venv created and guidellm installed unless it holds GUIDELLM."""
    if guidellm_version(venv) != GUIDELLM:
        print(f"installing guidellm {GUIDELLM} into {venv}", flush=True)
        if not (venv / "bin" / "python").exists():
            subprocess.run([sys.executable, "-m", "venv", str(venv)], check=True)
        command = install_command(venv)
        print("  " + shlex.join(command), flush=True)
        subprocess.run(command, check=True)
    return venv / "bin" / "guidellm"


@dataclass(frozen=True)
class Workload:
    """What guidellm sends at each level."""

    streams: tuple[int, ...]
    prompt_tokens: int
    output_tokens: int
    max_seconds: float

    def requests(self, size: str, streams: int) -> int:
        """Requests at `streams` for a model of `size` (a key of REQUESTS)."""
        return max(MIN_REQUESTS[size], streams * REQUESTS[size])


@dataclass(frozen=True)
class Target:
    """One server under test: its base URL and what guidellm's backend needs to reach it."""

    server: str
    url: str
    api_key: str | None = None
    model: str | None = None  # None: guidellm takes the first of /v1/models
    fixed_length: bool = True  # guidellm's default body (ignore_eos); else the reply capped by max_tokens
    extras: dict[str, Any] | None = None  # added to every body
    log: Path | None = None  # the server's output


def guidellm_command(
    guidellm: Path, target: Target, tokenizer: str, work: Workload, streams: int, requests: int, out: Path
) -> list[str]:
    """`guidellm run` for `target`: one level of a concurrent profile, `streams` streams, bounded by
    `requests` and by the workload's seconds; the JSON report into `out`."""
    backend: dict[str, Any] = {"kind": "openai_http", "target": target.url}
    if target.api_key:
        backend["api_key"] = target.api_key
    if target.model:
        backend["model"] = target.model
    data: dict[str, Any] = {"kind": "synthetic_text", "prompt_tokens": work.prompt_tokens}
    if target.fixed_length:
        data["output_tokens"] = work.output_tokens
    else:
        backend["max_tokens"] = work.output_tokens
    if target.extras:
        backend["extras"] = {"body": target.extras}
    return [
        str(guidellm), "run",
        "--backend", json.dumps(backend),
        "--tokenizer", json.dumps({"kind": "huggingface_auto", "model": tokenizer}),
        "--data", json.dumps(data),
        "--profile", json.dumps({"kind": "concurrent", "streams": streams}),
        "--constraint", json.dumps({"kind": "max_requests", "count": requests}),
        "--constraint", json.dumps({"kind": "max_duration", "seconds": work.max_seconds}),
        "--output", json.dumps({"kind": "json", "path": str(out)}),
        "--disable-progress",
    ]  # fmt: skip


def run_guidellm(command: list[str], out: Path, log: Path, timeout: float) -> dict[str, Any]:
    """Run `command` (its output into `log`), stopped by PID however it ends; its JSON report, `out`."""
    proc = spawn(command, {**os.environ, **OFFLINE}, log)
    try:
        code = proc.wait(timeout=timeout)
    finally:
        stop(proc, grace=10)
    if code != 0 or not out.exists():
        tail = log.read_text(errors="replace")[-3000:]
        raise RuntimeError(f"guidellm exited {code} (see {log}):\n{tail}")
    report: dict[str, Any] = json.loads(out.read_text())
    return report


def warm(target: Target) -> None:
    """One short request, so that neither server's first compile or allocation falls in a level."""
    headers = {"Authorization": f"Bearer {target.api_key}"} if target.api_key else {}
    with httpx.Client(base_url=target.url, headers=headers, timeout=300) as client:
        model = target.model or client.get("/v1/models").json()["data"][0]["id"]
        body = {"model": model, "messages": [{"role": "user", "content": "Hello there."}], "max_tokens": 4}
        client.post("/v1/chat/completions", json=body).raise_for_status()


@dataclass
class Measured:
    """One level of one server on one model: its row, the body it was sent, the errors it gave."""

    row: dict[str, Any]
    body: dict[str, Any] | None
    errors: dict[str, int]


def measure(
    guidellm: Path, target: Target, model: str, label: str, work: Workload, streams: int, requests: int,
    folder: Path,
) -> Measured:  # fmt: skip
    """guidellm against `target` serving `model` (its tokenizer is guidellm's) at `streams`: the row, the
    body, the errors; the tail of the server's log printed when any request errored."""
    name = f"{label}-{target.server}-{streams}".replace(" ", "-")
    out = folder / f"{name}.json"
    command = guidellm_command(guidellm, target, model, work, streams, requests, out)
    print(f"{target.server}, {label}, {streams} streams: {shlex.join(command)}", flush=True)
    report = run_guidellm(command, out, folder / f"{name}.log", work.max_seconds + 300)
    (row,) = levels(report, target.server, label)
    measured = Measured(row, request_body(report), errors(report))
    print(markdown([row])[2], flush=True)
    if measured.errors:
        print(f"  errors: {measured.errors}", flush=True)
        if target.log and target.log.exists():
            tail = target.log.read_text(errors="replace")[-4000:]
            print(f"  {target.server}'s log, {target.log}, ends:\n{tail}", flush=True)
    return measured


def ours_settings(work: Workload) -> dict[str, Any]:
    most = max(work.streams)
    # Out of the box but for the per-user limits: one bench key stands for every stream.
    return {
        "rate_limit": "1000000/minute",
        "max_waiting": most,
        "max_user_requests": most,
        "max_user_connections": most + 4,
        "device": "cpu",
        "dtype": "float32",
    }


def start_servers(stack: ExitStack, args: argparse.Namespace, model: str, label: str, folder: Path,
                  work: Workload) -> list[Target]:  # fmt: skip
    """Ours and (unless skipped) transformers serve on `model`, side by side until `stack` closes, each
    warmed by one short request."""
    log = folder / f"{label}-qwen-chat-server.log".replace(" ", "-")
    served = stack.enter_context(serve(model, folder, log=log, **ours_settings(work)))
    targets = [Target("qwen-chat", f"http://127.0.0.1:{served.port}", api_key=KEY, log=log)]
    if not args.skip_transformers_serve:
        blocks, page = cache_pages("cpu")
        url = stack.enter_context(transformers_serve(model, folder, "cpu", "float32", blocks, page))
        their_log = folder / "transformers-serve.log"  # where bench/transformers_serve.py writes it
        sampling = {"temperature": DEFAULTS.temperature, "top_p": DEFAULTS.top_p}
        targets.append(
            Target("transformers serve", url, model=model, fixed_length=False, extras=sampling, log=their_log)
        )
    for target in targets:
        warm(target)
    return targets


def models(args: argparse.Namespace, folder: Path) -> list[tuple[str, str, str]]:
    """(label, path, size) of each model measured: `--model`, else the tiny model and the 0.5B shape."""
    if args.model:
        return [(Path(args.model).name, args.model, "sized")]
    from qwen_chat.engine.tiny import make_tiny_model

    tiny = str(make_tiny_model(folder / "tiny-model"))
    shaped = str(make_shaped_model(folder / SHAPE, SHAPE))
    return [("tiny", tiny, "tiny"), (f"{SHAPE} shape", shaped, "sized")]


def run_all(args: argparse.Namespace, guidellm: Path, work: Workload, folder: Path) -> dict[str, Any]:
    """Every model on both servers, side by side; at each level the servers take turns, in reverse order at
    every other level, so that the machine's drift falls on both."""
    rows: list[dict[str, Any]] = []
    bodies: dict[str, Any] = {}
    seen_errors: dict[str, dict[str, int]] = {}
    for label, path, size in models(args, folder):
        with ExitStack() as stack:
            targets = start_servers(stack, args, path, label, folder, work)
            for i, streams in enumerate(work.streams):
                for target in targets if i % 2 == 0 else targets[::-1]:
                    requests = work.requests(size, streams)
                    measured = measure(guidellm, target, path, label, work, streams, requests, folder)
                    rows.append(measured.row)
                    bodies.setdefault(target.server, measured.body)
                    if measured.errors:
                        seen_errors[f"{target.server}, {label}, {streams} streams"] = measured.errors
    first = {label: i for i, label in enumerate(dict.fromkeys(row["model"] for row in rows))}
    rows.sort(key=lambda row: (first[row["model"]], row["streams"], row["server"] != "qwen-chat"))
    return {"rows": rows, "request_bodies": bodies, "errors": seen_errors}


def section(result: dict[str, Any]) -> str:
    work = result["workload"]
    lines = [
        f"Run {result['date']} on `{result['host']}` (CPU, {result['cpu_cores']} cores), guidellm "
        f"{result['guidellm']}, {result['wall_seconds']} s in all. `python -m bench.guidellm_run` (part of "
        f"`make bench`). Concurrent profile at {', '.join(str(s) for s in work['streams'])} streams; "
        f"synthetic prompts of {work['prompt_tokens']} tokens (plus the chat template's), replies of "
        f"{work['output_tokens']} tokens; a bounded number of requests per level (the table's ok + errored + "
        f"incomplete), at most {work['max_seconds']:g} s each. Both servers side by side, taking turns at "
        "each level. Ours gets guidellm's default body (every reply exactly its tokens, `ignore_eos`; no "
        "sampling field, so our defaults); transformers serve refuses it (422 on `ignore_eos`) and gets the "
        "reply capped by `max_completion_tokens` instead, with our default temperature and top_p. Output "
        "tok/s is guidellm's own (all requests of the level over its duration); latencies over the completed "
        "requests.",
        "",
        *markdown(result["rows"]),
    ]
    if result["errors"]:
        lines += ["", "Errored requests, by kind of error:", ""]
        for where, seen in result["errors"].items():
            lines += [f"- {where}: " + "; ".join(f"{count} x `{text[:200]}`" for text, count in seen.items())]
    return "\n".join(lines) + "\n"


def main() -> None:
    args = parse_args()
    started = time.monotonic()
    guidellm = ensure_guidellm(args.venv)
    streams = tuple(int(n) for n in args.streams.split(","))
    work = Workload(streams, args.prompt_tokens, args.output_tokens, args.max_seconds)
    folder = Path(tempfile.mkdtemp(prefix="qwen-chat-guidellm-"))
    try:
        measured = run_all(args, guidellm, work, folder)
    finally:
        if args.keep:
            print(f"kept {folder}")
        else:
            shutil.rmtree(folder, ignore_errors=True)
    result: dict[str, Any] = {
        "date": dt.datetime.now(dt.UTC).isoformat(timespec="seconds"),
        "host": platform.node(),
        "cpu_cores": len(os.sched_getaffinity(0)),
        "guidellm": GUIDELLM,
        "workload": {
            "streams": list(streams),
            "prompt_tokens": args.prompt_tokens,
            "output_tokens": args.output_tokens,
            "max_seconds": args.max_seconds,
            "requests": {size: [work.requests(size, n) for n in streams] for size in REQUESTS},
        },
        **measured,
        "wall_seconds": round(time.monotonic() - started, 1),
    }
    out = args.out_dir / f"{dt.date.today()}-{platform.node()}-{args.label}.json"
    save(result, out, args.benchmarks, args.label, section(result))


if __name__ == "__main__":
    main()
