"""Per-user chat rate limit (RATE_LIMIT, `limits` syntax such as `50/minute`), on every transport.

Fixed windows, counted in RATE_LIMIT_STORAGE. `memory://` is per process, so with several gunicorn
workers the counters go to a SQLite file in STATE_DIR that all workers of the pod share (`sqlite://`);
`redis://...` shares them across replicas. Storage calls run in a thread, never on the event loop. If the
storage fails, requests are allowed and the failure is logged: an outage of the limiter is not an outage
of the chat.
"""

from __future__ import annotations

import asyncio
import math
import sqlite3
import time
from contextlib import closing
from pathlib import Path

import structlog
from limits import RateLimitItem, parse
from limits.storage import Storage, storage_from_string
from limits.strategies import FixedWindowRateLimiter

from qwen_chat.runtime.state_dir import StateDir
from qwen_chat.settings import Settings

log = structlog.get_logger(__name__)

NAMESPACE = "qwen-chat"
# How long a storage call waits for another process's lock on the SQLite file.
_BUSY_SECONDS = 10.0


class SQLiteStorage(Storage):
    """Fixed-window counters in one SQLite file: shared by the processes of one machine (`sqlite:///path`)."""

    STORAGE_SCHEME = ["sqlite"]  # noqa: RUF012 (the limits registry reads this class attribute)

    def __init__(self, uri: str | None = None, wrap_exceptions: bool = False, **_: object) -> None:
        super().__init__(uri, wrap_exceptions=wrap_exceptions)
        self.path = (uri or "sqlite:///rate-limit.sqlite").removeprefix("sqlite://")
        self._create()

    def _create(self) -> None:
        """Make the file WAL with its table. Every worker does this at the same moment when it boots, and
        switching to WAL takes a lock that SQLite's busy timeout does not wait for: retry a while."""
        deadline = time.monotonic() + _BUSY_SECONDS
        while True:
            try:
                with closing(self._connect()) as db:
                    if db.execute("PRAGMA journal_mode").fetchone()[0] != "wal":
                        db.execute("PRAGMA journal_mode=WAL")
                    db.execute(
                        "CREATE TABLE IF NOT EXISTS counters "
                        "(key TEXT PRIMARY KEY, count INTEGER, expires REAL)"
                    )
                return
            except sqlite3.OperationalError as exc:
                if "locked" not in str(exc) or time.monotonic() > deadline:
                    raise
                time.sleep(0.02)

    def _connect(self) -> sqlite3.Connection:
        return sqlite3.connect(self.path, timeout=_BUSY_SECONDS, isolation_level=None)

    @property
    def base_exceptions(self) -> type[Exception]:
        return sqlite3.Error

    def incr(self, key: str, expiry: int, amount: int = 1) -> int:
        now = time.time()
        db = self._connect()
        try:
            db.execute("BEGIN IMMEDIATE")
            db.execute("DELETE FROM counters WHERE key = ? AND expires <= ?", (key, now))
            db.execute(
                "INSERT INTO counters (key, count, expires) VALUES (?, ?, ?) "
                "ON CONFLICT(key) DO UPDATE SET count = count + excluded.count",
                (key, amount, now + expiry),
            )
            (count,) = db.execute("SELECT count FROM counters WHERE key = ?", (key,)).fetchone()
            db.execute("COMMIT")
            return int(count)
        finally:
            db.close()

    def _row(self, key: str) -> tuple[int, float] | None:
        with closing(self._connect()) as db:
            row = db.execute("SELECT count, expires FROM counters WHERE key = ?", (key,)).fetchone()
        return (int(row[0]), float(row[1])) if row and row[1] > time.time() else None

    def get(self, key: str) -> int:
        row = self._row(key)
        return row[0] if row else 0

    def get_expiry(self, key: str) -> float:
        row = self._row(key)
        return row[1] if row else time.time()

    def check(self) -> bool:
        return Path(self.path).exists()

    def reset(self) -> int | None:
        with closing(self._connect()) as db:
            return db.execute("DELETE FROM counters").rowcount

    def clear(self, key: str) -> None:
        with closing(self._connect()) as db:
            db.execute("DELETE FROM counters WHERE key = ?", (key,))


def storage_uri(settings: Settings) -> str:
    """RATE_LIMIT_STORAGE, except that per-process memory becomes a pod-wide file under several workers."""
    uri = settings.rate_limit_storage
    if uri.startswith("memory://") and settings.workers > 1 and settings.state_dir is not None:
        return f"sqlite://{StateDir(settings.state_dir).rate_limit_db}"
    return uri


class RateLimiter:
    def __init__(self, settings: Settings) -> None:
        self.item: RateLimitItem = parse(settings.rate_limit)
        self.storage_uri = storage_uri(settings)
        self._limiter = FixedWindowRateLimiter(storage_from_string(self.storage_uri))

    async def hit(self, user: str) -> float | None:
        """Count one chat request of `user`: None if allowed, else the seconds until the next is."""
        return await asyncio.to_thread(self._hit, user)

    def _hit(self, user: str) -> float | None:
        try:
            if self._limiter.hit(self.item, NAMESPACE, user):
                return None
            reset_at, _ = self._limiter.get_window_stats(self.item, NAMESPACE, user)
        except Exception as exc:
            log.error("rate_limit_storage_failed", error=f"{type(exc).__name__}: {exc}")
            return None
        return float(max(1, math.ceil(reset_at - time.time())))
