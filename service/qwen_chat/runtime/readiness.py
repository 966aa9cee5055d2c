"""Readiness of the whole pod, answered the same by every worker.

Each worker publishes its state as a small file `<dir>/<pid>` (`loading`, `ready`, `failed`, `draining`, and
on a second line why, when its engine restarts or failed);
the gunicorn master wipes the folder when it starts and removes a worker's file when it exits. The pod is
ready when WORKERS files say `ready`. Without a folder (one process, no gunicorn) the local state is all.
"""

from __future__ import annotations

import contextlib
import os
from dataclasses import dataclass
from pathlib import Path


@dataclass(frozen=True)
class PodReadiness:
    status: str  # ready, loading, failed or draining
    workers_ready: int
    workers: int
    reason: str = ""  # why a worker is not ready, when it said (an engine that restarts or failed)

    @property
    def ready(self) -> bool:
        return self.status == "ready"

    def as_dict(self) -> dict[str, object]:
        body: dict[str, object] = {
            "status": self.status,
            "workers_ready": self.workers_ready,
            "workers": self.workers,
        }
        if self.reason and not self.ready:
            body["reason"] = self.reason
        return body


def summarize(states: list[str], workers: int, reasons: list[str] | None = None) -> PodReadiness:
    reason = next((r for r in reasons or [] if r), "")
    ready = states.count("ready")
    if "draining" in states:
        status = "draining"
    elif "failed" in states:
        status = "failed"
    elif ready >= workers:
        status = "ready"
    else:
        status = "loading"
    return PodReadiness(status, min(ready, workers), workers, reason)


class WorkerStates:
    def __init__(self, directory: Path | None, workers: int) -> None:
        self._directory = directory
        self._workers = workers if directory is not None else 1
        self._local = "loading"
        self._reason = ""

    def publish(self, state: str, reason: str = "") -> None:
        self._local, self._reason = state, reason
        if self._directory is None:
            return
        self._directory.mkdir(parents=True, exist_ok=True)
        path = self._directory / str(os.getpid())
        tmp = path.with_suffix(".tmp")
        tmp.write_text(f"{state}\n{reason}" if reason else state)
        tmp.replace(path)  # atomic: readers never see a half-written state

    def pod(self) -> PodReadiness:
        if self._directory is None:
            return summarize([self._local], 1, [self._reason])
        states, reasons = [], []
        with contextlib.suppress(OSError):
            for entry in self._directory.iterdir():
                if entry.suffix == ".tmp":
                    continue
                with contextlib.suppress(OSError):
                    state, _, reason = entry.read_text().strip().partition("\n")
                    states.append(state)
                    reasons.append(reason)
        return summarize(states, self._workers, reasons)


def remove_worker(directory: Path, pid: int) -> None:
    with contextlib.suppress(OSError):
        (directory / str(pid)).unlink()


def reset(directory: Path) -> None:
    """Called by the master at start: no state survives from an earlier run."""
    directory.mkdir(parents=True, exist_ok=True)
    for entry in directory.iterdir():
        with contextlib.suppress(OSError):
            entry.unlink()
