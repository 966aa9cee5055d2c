"""gunicorn configuration, importable as `python:qwen_chat.gunicorn_conf`; every value comes from Settings."""

from __future__ import annotations

from qwen_chat.logging_setup import configure_logging, logging_config
from qwen_chat.settings import get_settings

_settings = get_settings()
configure_logging(_settings.log_format, _settings.log_level)

wsgi_app = "qwen_chat.app:create_app()"
worker_class = "qwen_chat.worker.QwenChatWorker"
bind = [
    f"[{_settings.host}]:{_settings.port}" if ":" in _settings.host else f"{_settings.host}:{_settings.port}"
]
workers = _settings.workers
# The model loads in a thread after the worker has booted, so the heartbeat keeps going during a load.
timeout = 120
# SIGTERM waits this long for in-flight generations before workers are killed.
graceful_timeout = int(_settings.drain_seconds) + 5
# Longer than the idle timeout of common load balancers (60 s), so they close idle connections first.
keepalive = 75
logconfig_dict = logging_config(_settings.log_format, _settings.log_level)
accesslog = "-"
errorlog = "-"
proc_name = "qwen-chat"
# gunicorn's control socket needs a writable home; the image's root filesystem is read-only.
control_socket_disable = True
