"""API keys from a mounted Kubernetes Secret: one file per user, file name = user id, content = key.

kubelet updates a Secret volume by writing a new `..<timestamp>` directory and swapping the `..data`
symlink; the user files are links through `..data`. The store re-reads the directory when it may have
changed (at most every `reload_seconds`), so a rotated key works and the old one stops without a restart.

At startup (`check_directory`, called by the gunicorn master) a CREDENTIALS_DIR that does not exist, is not
a directory or cannot be listed is a configuration error: the service exits rather than refusing everyone
for a reason nobody sees. An empty directory is allowed (a Secret with no users yet, or one populated
late): every request is refused with 401 until keys appear, and a warning says so. While running, a
directory that disappears or cannot be read refuses every key (fail closed) until it is back.
"""

from __future__ import annotations

import hmac
import os
import threading
import time
from pathlib import Path

import structlog

log = structlog.get_logger(__name__)


def check_directory(directory: Path) -> str | None:
    """Why `directory` cannot be CREDENTIALS_DIR, or None if it can (it may hold no keys yet)."""
    try:
        os.listdir(directory)
    except FileNotFoundError:
        return "the directory does not exist"
    except NotADirectoryError:
        return "the path is not a directory"
    except PermissionError:
        return "the directory cannot be read (permission denied)"
    except OSError as exc:
        return f"the directory cannot be read ({exc.strerror or type(exc).__name__})"
    return None


class CredentialStore:
    def __init__(self, directory: Path, reload_seconds: float = 10.0) -> None:
        self._directory = directory
        self._reload_seconds = reload_seconds
        self._keys: dict[str, bytes] = {}
        self._fingerprint: object = None
        self._checked_at = float("-inf")
        self._lock = threading.Lock()
        self.reload()

    @property
    def users(self) -> list[str]:
        self._maybe_reload()
        return sorted(self._keys)

    def authenticate(self, key: str) -> str | None:
        """The user id whose key this is, or None. Compares against every key, in constant time each."""
        self._maybe_reload()
        candidate = key.encode()
        found = None
        for user, expected in self._keys.items():
            if hmac.compare_digest(candidate, expected):
                found = user
        return found

    def check(self, user: str, key: str) -> bool:
        """Whether `key` is `user`'s key (the seed-style `?userid=&secret=` check)."""
        self._maybe_reload()
        expected = self._keys.get(user)
        # Compare against something even for an unknown user, so timing does not reveal which users exist.
        matches = hmac.compare_digest(key.encode(), expected if expected is not None else b"\0" * 32)
        return expected is not None and matches

    def reload(self) -> None:
        with self._lock:
            self._checked_at = time.monotonic()
            fingerprint = self._read_fingerprint()
            if fingerprint == self._fingerprint:
                return
            keys = self._read_keys()
            self._fingerprint = fingerprint
            if keys != self._keys:
                log.info("credentials_loaded", directory=str(self._directory), users=len(keys))
            self._keys = keys

    def _maybe_reload(self) -> None:
        if time.monotonic() - self._checked_at >= self._reload_seconds:
            self.reload()

    def _entries(self) -> list[Path]:
        try:
            names = os.listdir(self._directory)
        except OSError:
            return []
        # Dot entries are kubelet's bookkeeping (`..data`, `..2026_11_23...`), not users.
        return [self._directory / name for name in sorted(names) if not name.startswith(".")]

    def _read_fingerprint(self) -> object:
        try:
            data_link = os.readlink(self._directory / "..data")
        except OSError:
            data_link = None
        stats = []
        for path in self._entries():
            try:
                st = path.stat()
            except OSError:
                continue
            stats.append((path.name, st.st_ino, st.st_mtime_ns, st.st_size))
        return (data_link, tuple(stats))

    def _read_keys(self) -> dict[str, bytes]:
        problem = check_directory(self._directory)
        if problem is not None:
            log.warning("credentials_dir_unusable", directory=str(self._directory), error=problem)
            return {}
        keys: dict[str, bytes] = {}
        for path in self._entries():
            try:
                if not path.is_file():
                    continue
                key = path.read_text(encoding="utf-8").strip()
            except (OSError, UnicodeDecodeError) as exc:
                log.warning("credential_unreadable", user=path.name, error=type(exc).__name__)
                continue
            if key:
                keys[path.name] = key.encode()
            else:
                log.warning("credential_empty", user=path.name)
        if not keys:
            log.warning(
                "credentials_none",
                directory=str(self._directory),
                detail="no keys: every request is refused with 401 until keys appear",
            )
        return keys
