"""Time from `qwen-chat serve` to /readyz 200, and resident memory per worker, for 1 and 2 workers.

    .venv/bin/python bench/startup.py [--model PATH_OR_ID]

Prints a table and writes bench/results/<date>-<host>-startup.json.
"""

from __future__ import annotations

import argparse
import datetime as dt
import json
import os
import platform
import signal
import socket
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import httpx
import psutil

from qwen_chat.tiny_model import make_tiny_model


def measure(model: str, workers: int, credentials: Path) -> dict[str, object]:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        port = sock.getsockname()[1]
    env = {
        **os.environ,
        "QWEN_CHAT_MODEL": model,
        "QWEN_CHAT_CREDENTIALS_DIR": str(credentials),
        "QWEN_CHAT_HOST": "127.0.0.1",
        "QWEN_CHAT_PORT": str(port),
        "QWEN_CHAT_WORKERS": str(workers),
        "QWEN_CHAT_LOG_LEVEL": "warning",
    }
    started = time.monotonic()
    proc = subprocess.Popen(
        [str(Path(sys.executable).with_name("qwen-chat")), "serve"],
        env=env,
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
        start_new_session=True,
    )
    try:
        while True:
            try:
                if httpx.get(f"http://127.0.0.1:{port}/readyz", timeout=2).status_code == 200:
                    break
            except httpx.HTTPError:
                pass
            if time.monotonic() - started > 600:
                raise TimeoutError("not ready after 600 s")
            time.sleep(0.05)
        ready_seconds = time.monotonic() - started
        rss = [round(child.memory_info().rss / 2**20, 1) for child in psutil.Process(proc.pid).children()]
    finally:
        os.killpg(proc.pid, signal.SIGTERM)
        proc.wait(timeout=60)
    return {"workers": workers, "ready_seconds": round(ready_seconds, 2), "worker_rss_mib": rss}


def main() -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--model", help="model id or path (default: a freshly built tiny model)")
    args = parser.parse_args()
    work = Path(tempfile.mkdtemp(prefix="qwen-chat-bench-"))
    model = args.model or str(make_tiny_model(work / "tiny-model"))
    credentials = work / "credentials"
    credentials.mkdir()
    (credentials / "bench").write_text("bench-key-0123456789")
    rows = [measure(model, workers, credentials) for workers in (1, 2)]
    print("| workers | start to /readyz 200 (s) | resident memory per worker (MiB) |")
    print("|---|---|---|")
    for row in rows:
        print(f"| {row['workers']} | {row['ready_seconds']} | {', '.join(map(str, row['worker_rss_mib']))} |")
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
