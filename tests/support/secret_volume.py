"""The test users' keys, and a folder laid out (and updated) the way kubelet lays out a Secret volume."""

from __future__ import annotations

from pathlib import Path

KEYS = {"alice": "alice-key-0123456789", "bob": "bob-key-9876543210"}


class SecretVolume:
    """A folder laid out as kubelet lays out a Secret volume, updated the way kubelet updates it."""

    def __init__(self, root: Path) -> None:
        self.root = root
        self.root.mkdir(parents=True, exist_ok=True)
        self._version = 0

    def write(self, keys: dict[str, str]) -> None:
        self._version += 1
        data = self.root / f"..2026_11_23_00_00_{self._version:02d}.000000000"
        data.mkdir()
        for user, key in keys.items():
            (data / user).write_text(key + "\n")
        # Atomic swap of `..data`, then user links through it; stale links disappear.
        tmp_link = self.root / "..data_tmp"
        tmp_link.symlink_to(data.name)
        tmp_link.replace(self.root / "..data")
        for user in keys:
            link = self.root / user
            if not link.is_symlink():
                link.symlink_to(f"..data/{user}")
        for entry in self.root.iterdir():
            if not entry.name.startswith(".") and entry.name not in keys:
                entry.unlink()
