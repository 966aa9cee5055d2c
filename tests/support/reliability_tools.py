"""What the reliability and security tests share: the contract's codes, a per-chat deadline, worker memory,
a scan of everything a test captured for keys and leaked internals, and the figures each test reports.

Figures go to test-output/reliability/<test>.json (and stdout, shown with `pytest -s`); docs/reliability.md
quotes them.
"""

from __future__ import annotations

import json
import re
import time
from collections import Counter
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import psutil

from tests.support.secret_volume import KEYS

# The contract's /ws error codes and close codes (docs: /work/shared/CONTRACT.md, "WebSocket /ws").
ERROR_CODES = {"bad_request", "too_long", "busy", "rate_limited", "overloaded", "internal"}
FINISH_REASONS = {"stop", "length", "cancelled"}
# RFC 6455 codes for frames that break the WebSocket protocol itself (answered by uvicorn's websockets
# layer before the app sees them): 1002 protocol error, 1007 text that is not UTF-8.
PROTOCOL_CLOSE_CODES = {1002, 1007}

OUTPUT = Path(__file__).resolve().parents[2] / "test-output" / "reliability"

# What a client must never see in an error: a traceback, a source path, a module path.
_INTERNALS = re.compile(
    r"Traceback \(most recent call last\)|File \"[^\"]+\", line \d+|/work/|site-packages|dist-packages"
    r"|/usr/lib/python|\.py\", line|qwen_chat(?:\.[a-z_]+)+\.(?:[A-Za-z_]+Error|Refusal)"
)


def secrets_of(extra: list[str] | None = None) -> list[str]:
    """Every key the tests hand out, and the base64url forms a browser would send them in."""
    import base64

    keys = [*KEYS.values(), *(extra or [])]
    encoded = [base64.urlsafe_b64encode(key.encode()).decode().rstrip("=") for key in keys]
    return keys + encoded


def leaked_secrets(texts: dict[str, str], secrets: list[str]) -> list[str]:
    """`where: which secret` for every captured text that contains a secret (the secret itself is masked)."""
    found = []
    for where, text in texts.items():
        for secret in secrets:
            if secret and secret in text:
                found.append(f"{where}: a key ({secret[:3]}...) appears")
    return found


def leaked_internals(text: str) -> str | None:
    """The first traceback line or server path in `text`, or None."""
    match = _INTERNALS.search(text)
    return match.group(0) if match else None


def worker_rss(pids: list[int]) -> dict[int, int]:
    """Resident memory (bytes) of each worker process."""
    return {pid: psutil.Process(pid).memory_info().rss for pid in pids}


@dataclass
class Figures:
    """The numbers a test reports: counts, outcomes, seconds."""

    test: str
    started: float = field(default_factory=time.monotonic)
    counts: Counter[str] = field(default_factory=Counter)
    values: dict[str, Any] = field(default_factory=dict)

    def add(self, name: str, amount: int = 1) -> None:
        self.counts[name] += amount

    def set(self, **values: Any) -> None:
        self.values.update(values)

    def write(self) -> dict[str, Any]:
        data = {
            "test": self.test,
            "seconds": round(time.monotonic() - self.started, 1),
            **self.values,
            "counts": dict(sorted(self.counts.items())),
        }
        OUTPUT.mkdir(parents=True, exist_ok=True)
        (OUTPUT / f"{self.test}.json").write_text(json.dumps(data, indent=2) + "\n")
        print(f"\nreliability figures: {json.dumps(data)}")
        return data


def log_text(path: Path) -> str:
    return path.read_text(errors="replace") if path.exists() else ""


def error_log_lines(text: str) -> list[str]:
    """Log lines at error level or above, or carrying a traceback, from JSON or plain lines."""
    bad = []
    for line in text.splitlines():
        try:
            record = json.loads(line)
        except ValueError:
            record = None
        if isinstance(record, dict):
            if record.get("level") in {"error", "critical", "exception"} or "exception" in record:
                bad.append(line)
        elif "Traceback" in line or " ERROR " in line:
            bad.append(line)
    return bad
