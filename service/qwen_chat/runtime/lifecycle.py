"""What the app and the process that serves it tell each other, without importing each other.

The app's lifespan offers its drain while it serves and reports a model that cannot load; a gunicorn worker
(when there is one) reads the drain on SIGTERM and decides what a failed load means for its process. In
tests that run the app in a plain uvicorn server nothing hosts it: a failed load leaves /readyz `failed`.
"""

from __future__ import annotations

from collections.abc import Awaitable, Callable
from typing import Any

DrainHandler = Callable[[], Awaitable[None]]


class WorkerLifecycle:
    def __init__(self) -> None:
        self._drain: DrainHandler | None = None
        self._on_load_failed: Callable[[], bool] | None = None

    @staticmethod
    def of(app: Any) -> WorkerLifecycle | None:
        """The lifecycle of an app made by `create_app` (its one attachment the runtime reads)."""
        lifecycle = getattr(getattr(app, "state", None), "lifecycle", None)
        return lifecycle if isinstance(lifecycle, WorkerLifecycle) else None

    # --- the app's side ---

    def offer_drain(self, drain: DrainHandler | None) -> None:
        """While the app serves, SIGTERM runs `drain` before the process exits; None: exit at once."""
        self._drain = drain

    def report_load_failed(self) -> bool:
        """The model cannot be loaded. Returns whether this process will stop because of it."""
        return self._on_load_failed() if self._on_load_failed is not None else False

    # --- the host's side ---

    @property
    def drain(self) -> DrainHandler | None:
        return self._drain

    def host(self, on_load_failed: Callable[[], bool]) -> None:
        """A process runtime hosts the app: `on_load_failed` says (and arranges) whether it exits."""
        self._on_load_failed = on_load_failed
