"""`qwen-chat serve --dev`: a service that starts on any machine, hub or not, with a development key."""

from __future__ import annotations

import os
import secrets
import sys
from collections.abc import MutableMapping
from pathlib import Path

from qwen_chat.settings import DEFAULT_MODEL

ENV_PREFIX = "QWEN_CHAT_"
DEV_USER = "dev"


def cache_dir() -> Path:
    base = os.environ.get("XDG_CACHE_HOME") or str(Path.home() / ".cache")
    return Path(base) / "qwen-chat"


def hub_model_available(model: str, timeout: float = 3.0) -> bool:
    """Whether `model` can be loaded: already in the local cache, or the hub answers for it."""
    if Path(model).exists():
        return True
    try:
        from huggingface_hub import model_info, try_to_load_from_cache
    except ImportError:
        return False
    if isinstance(try_to_load_from_cache(model, "config.json"), str):
        return True
    if os.environ.get("HF_HUB_OFFLINE", "").lower() in {"1", "true", "yes"}:
        return False
    try:
        model_info(model, timeout=timeout)
    except Exception:
        return False
    return True


def dev_credentials(directory: Path) -> str:
    """The development key in `directory` (user `dev`), created on first use."""
    directory.mkdir(parents=True, exist_ok=True, mode=0o700)
    key_file = directory / DEV_USER
    if not key_file.exists():
        key_file.write_text(secrets.token_urlsafe(24) + "\n")
        key_file.chmod(0o600)
    return key_file.read_text().strip()


def prepare(environ: MutableMapping[str, str]) -> list[str]:
    """Fill in what a developer has not configured; returns the lines to show them."""
    from qwen_chat.engine.tiny import make_tiny_model

    lines = []
    environ.setdefault(ENV_PREFIX + "HOST", "127.0.0.1")
    environ.setdefault(ENV_PREFIX + "LOG_FORMAT", "console")
    if ENV_PREFIX + "MODEL" not in environ and not hub_model_available(DEFAULT_MODEL):
        tiny = cache_dir() / "tiny-model"
        if not (tiny / "config.json").exists():
            make_tiny_model(tiny)
        environ[ENV_PREFIX + "MODEL"] = str(tiny)
        lines += [
            "!" * 78,
            f"!! {DEFAULT_MODEL} is not cached and the model hub cannot be reached.",
            f"!! Serving the TINY RANDOM TEST MODEL from {tiny}: its replies are gibberish.",
            f"!! Set {ENV_PREFIX}MODEL to a model id or local path to serve a real model.",
            "!" * 78,
        ]
    if (
        ENV_PREFIX + "CREDENTIALS_DIR" not in environ
        and environ.get(ENV_PREFIX + "AUTH_ENABLED", "true") != "false"
    ):
        directory = cache_dir() / "dev-credentials"
        key = dev_credentials(directory)
        environ[ENV_PREFIX + "CREDENTIALS_DIR"] = str(directory)
        host = environ[ENV_PREFIX + "HOST"]
        port = environ.get(ENV_PREFIX + "PORT", "8000")
        shown = "127.0.0.1" if host in {"0.0.0.0", "::"} else host
        lines += [
            f"qwen-chat (development): http://{shown}:{port}/  WebSocket: ws://{shown}:{port}/ws",
            f"development key (user {DEV_USER!r}, from {directory}): {key}",
        ]
    return lines


def announce(lines: list[str]) -> None:
    for line in lines:
        print(line, file=sys.stderr, flush=True)
