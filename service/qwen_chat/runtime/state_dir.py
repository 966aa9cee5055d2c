"""STATE_DIR, the writable folder a pod's workers share, and what lives in it."""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path


@dataclass(frozen=True)
class StateDir:
    root: Path

    @property
    def workers(self) -> Path:
        """One small file per worker holding its readiness state (see readiness.py)."""
        return self.root / "workers"

    @property
    def metrics(self) -> Path:
        """prometheus-client's multiprocess files, unless PROMETHEUS_MULTIPROC_DIR says otherwise."""
        return self.root / "metrics"

    @property
    def rate_limit_db(self) -> Path:
        """The SQLite file that holds the pod's rate-limit counters when several workers share them."""
        return self.root / "rate-limit.sqlite"

    @property
    def boot_failed(self) -> Path:
        """Created by the first worker that gives up on the model (see worker.py); the master removes it when
        it starts. gunicorn's master halts on the first WORKER_BOOT_ERROR, and a second one arriving while it
        halts would crash it: only the worker that created this exits so."""
        return self.root / "boot-failed"
