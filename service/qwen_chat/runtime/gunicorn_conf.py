"""gunicorn configuration, importable as `python:qwen_chat.runtime.gunicorn_conf`; every value comes from
Settings."""

from __future__ import annotations

import os
import shutil
import sys
import tempfile
from pathlib import Path
from typing import Any

from qwen_chat.logging_setup import configure_logging, logging_config
from qwen_chat.runtime.state_dir import StateDir
from qwen_chat.settings import get_settings

# Not imported from qwen_chat.metrics: prometheus_client must first be imported after this is set.
MULTIPROC_ENV = "PROMETHEUS_MULTIPROC_DIR"

_settings = get_settings()
configure_logging(_settings.log_format, _settings.log_level)

# Workers share readiness and metrics through files; the folder must exist before they fork.
_own_state_dir = _settings.state_dir is None
_state_dir = StateDir(_settings.state_dir or Path(tempfile.mkdtemp(prefix="qwen-chat-")))
os.environ["QWEN_CHAT_STATE_DIR"] = str(_state_dir.root)
os.environ.setdefault(MULTIPROC_ENV, str(_state_dir.metrics))
get_settings.cache_clear()  # workers fork from this process: let them see the folder

wsgi_app = "qwen_chat.app:create_app()"
worker_class = "qwen_chat.runtime.worker.QwenChatWorker"
bind = [
    f"[{_settings.host}]:{_settings.port}" if ":" in _settings.host else f"{_settings.host}:{_settings.port}"
]
workers = _settings.workers
# The model loads in a thread after the worker has booted, so the heartbeat keeps going during a load.
timeout = 120
# SIGTERM: workers drain for DRAIN_SECONDS (see drain.py), then need a moment to close and unload.
graceful_timeout = int(_settings.drain_seconds) + 10
# Longer than the idle timeout of common load balancers (60 s), so they close idle connections first.
keepalive = 75
logconfig_dict = logging_config(_settings.log_format, _settings.log_level)
accesslog = "-"
errorlog = "-"
proc_name = "qwen-chat"
# gunicorn's control socket needs a writable home; the image's root filesystem is read-only.
control_socket_disable = True


# The master's exit status when the configuration cannot work (the same as `qwen-chat serve` for invalid
# settings); a model that cannot load ends it with gunicorn's WORKER_BOOT_ERROR, 3 (see worker.py).
CONFIG_ERROR = 2


def on_starting(server: Any) -> None:
    """Check what every worker needs, then make sure nothing from an earlier run counts: wipe old metrics,
    worker states and the boot-failure marker."""
    from qwen_chat.runtime.readiness import reset

    _check_credentials_dir(server)
    metrics_dir = Path(os.environ[MULTIPROC_ENV])
    shutil.rmtree(metrics_dir, ignore_errors=True)
    metrics_dir.mkdir(parents=True, exist_ok=True)
    reset(_state_dir.workers)
    _state_dir.boot_failed.unlink(missing_ok=True)
    if _settings.kv_events_endpoint:
        _start_kv_events(server)


def _check_credentials_dir(server: Any) -> None:
    """With auth on, a CREDENTIALS_DIR that is missing or unreadable stops the service before any worker
    starts, with one clear line; an empty one is allowed (see auth/credentials.py)."""
    if not _settings.auth_enabled:
        return
    from qwen_chat.auth.credentials import check_directory

    problem = check_directory(_settings.credentials_dir)
    if problem is None:
        return
    _stop_unconfigured(
        server,
        "credentials_dir_unusable",
        directory=str(_settings.credentials_dir),
        error=problem,
        detail="QWEN_CHAT_CREDENTIALS_DIR must be a readable directory with one file per user "
        "(the mounted Secret); QWEN_CHAT_AUTH_ENABLED=false turns authentication off for local development",
    )


def _start_kv_events(server: Any) -> None:
    """The pod's KV-event publisher (runtime/kv_events.py); an endpoint it cannot bind stops the service,
    as a port the server cannot bind does."""
    from qwen_chat.runtime.kv_events import PublisherFailed, start_publisher

    try:
        server.kv_events = start_publisher(_settings, _state_dir.root)
    except PublisherFailed as exc:
        _stop_unconfigured(
            server,
            "kv_events_unavailable",
            error=str(exc),
            detail="QWEN_CHAT_KV_EVENTS_ENDPOINT must be a ZMQ endpoint this pod can bind, e.g. tcp://*:5557",
        )


def _stop_unconfigured(server: Any, event: str, **fields: str) -> None:
    """A configuration that cannot work: one error line, then the master exits with CONFIG_ERROR."""
    import structlog

    structlog.get_logger(__name__).error(event, **fields)
    on_exit(server)
    sys.exit(CONFIG_ERROR)


def child_exit(server: Any, worker: Any) -> None:
    """A worker is gone: its live gauges leave /metrics and the pod is not ready until its replacement is."""
    from qwen_chat.metrics import mark_worker_dead
    from qwen_chat.runtime.readiness import remove_worker

    mark_worker_dead(worker.pid)
    remove_worker(_state_dir.workers, worker.pid)


def on_exit(server: Any) -> None:
    publisher = getattr(server, "kv_events", None)
    if publisher is not None:
        from qwen_chat.runtime.kv_events import stop_publisher

        stop_publisher(publisher)
    if _own_state_dir:
        shutil.rmtree(_state_dir.root, ignore_errors=True)
