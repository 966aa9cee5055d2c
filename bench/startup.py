"""Time from `qwen-chat serve` to /readyz 200, and resident memory per worker with its engine process and
each apart, for 1 and 2 workers.

    .venv/bin/python -m bench.startup [--model PATH_OR_ID]

Prints a table and writes bench/results/<date>-<host>-startup.json.
"""

from __future__ import annotations

import argparse
import datetime as dt
import json
import platform
import tempfile
from pathlib import Path

from bench.resources import worker_and_engine_rss_mib
from bench.serving import serve
from qwen_chat.engine.tiny import make_tiny_model


def measure(model: str, workers: int, work: Path) -> dict[str, object]:
    with serve(model, work, workers=workers) as served:
        apart = worker_and_engine_rss_mib(served.proc.pid)
    return {
        "workers": workers,
        "ready_seconds": round(served.ready_seconds, 2),
        "worker_rss_mib": [round(worker + engine, 1) for worker, engine in apart],
        "worker_alone_rss_mib": [round(worker, 1) for worker, _ in apart],
        "engine_process_rss_mib": [round(engine, 1) for _, engine in apart],
    }


def main() -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--model", help="model id or path (default: a freshly built tiny model)")
    args = parser.parse_args()
    work = Path(tempfile.mkdtemp(prefix="qwen-chat-bench-"))
    model = args.model or str(make_tiny_model(work / "tiny-model"))
    rows = [measure(model, workers, work) for workers in (1, 2)]
    print("| workers | start to /readyz 200 (s) | RSS per worker (MiB) | the worker alone | its engine |")
    print("|---|---|---|---|---|")
    for row in rows:
        cells = [row[key] for key in ("worker_rss_mib", "worker_alone_rss_mib", "engine_process_rss_mib")]
        memory = " | ".join(", ".join(map(str, cell)) for cell in cells)  # type: ignore[call-overload]
        print(f"| {row['workers']} | {row['ready_seconds']} | {memory} |")
    result = {
        "date": dt.datetime.now(dt.UTC).isoformat(timespec="seconds"),
        "host": platform.node(),
        "model": args.model or "tiny (qwen-chat make-tiny-model)",
        "rows": rows,
    }
    out = Path(__file__).parent / "results" / f"{dt.date.today()}-{platform.node()}-startup.json"
    out.write_text(json.dumps(result, indent=2) + "\n")
    print(f"wrote {out}")


if __name__ == "__main__":
    main()
