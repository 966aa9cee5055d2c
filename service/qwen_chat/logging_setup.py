"""structlog for the app, with the standard library's loggers (uvicorn, gunicorn) sent through it,
so every line has one format: JSON for machines, or a console layout for humans."""

from __future__ import annotations

import logging
import logging.config
import re
from typing import Any

import structlog
from opentelemetry import trace

# Credentials that could reach a log line through a URL or a header: `?secret=...`, `Bearer ...`.
_SECRET = re.compile(r"(?i)((?:secret|token|key|password|api_key)=)[^&\s\"']+|(bearer\s+)[^\s\"',]+")


def redact(text: str) -> str:
    return _SECRET.sub(lambda m: (m.group(1) or m.group(2)) + "[redacted]", text)


def _redact_event(_logger: Any, _name: str, event_dict: dict[str, Any]) -> dict[str, Any]:
    event = event_dict.get("event")
    if isinstance(event, str):
        event_dict["event"] = redact(event)
    return event_dict


def _add_trace_ids(_logger: Any, _name: str, event_dict: dict[str, Any]) -> dict[str, Any]:
    """The current span's ids (W3C hex), so a log line leads to its trace; none while traces are off."""
    context = trace.get_current_span().get_span_context()
    if context.is_valid:
        event_dict.setdefault("trace_id", format(context.trace_id, "032x"))
        event_dict.setdefault("span_id", format(context.span_id, "016x"))
    return event_dict


_SHARED: list[Any] = [
    _redact_event,
    _add_trace_ids,
    structlog.contextvars.merge_contextvars,
    structlog.stdlib.add_log_level,
    structlog.stdlib.add_logger_name,
    structlog.processors.TimeStamper(fmt="iso", utc=True),
]


def _stamp(fields: dict[str, Any]) -> Any:
    """A processor that adds `fields` to every line of this process (from any thread)."""

    def stamp(_logger: Any, _name: str, event_dict: dict[str, Any]) -> dict[str, Any]:
        for key, value in fields.items():
            event_dict.setdefault(key, value)
        return event_dict

    return stamp


def logging_config(
    log_format: str = "json", level: str = "info", fields: dict[str, Any] | None = None
) -> dict[str, Any]:
    """A `logging.config.dictConfig` for stdlib loggers; gunicorn takes it as `logconfig_dict`. `fields`
    go on every line (the engine process marks its lines so)."""
    shared = [*_SHARED, _stamp(fields)] if fields else _SHARED
    renderer: Any = (
        structlog.processors.JSONRenderer()
        if log_format == "json"
        else structlog.dev.ConsoleRenderer(colors=False)
    )
    return {
        "version": 1,
        "disable_existing_loggers": False,
        "formatters": {
            "structlog": {
                "()": structlog.stdlib.ProcessorFormatter,
                "processors": [
                    structlog.stdlib.ProcessorFormatter.remove_processors_meta,
                    structlog.processors.format_exc_info,
                    renderer,
                ],
                "foreign_pre_chain": shared,
            }
        },
        "handlers": {
            "default": {
                "class": "logging.StreamHandler",
                "formatter": "structlog",
                "stream": "ext://sys.stderr",
            }
        },
        "root": {"handlers": ["default"], "level": level.upper()},
        "loggers": {
            # Under gunicorn, UvicornWorker hands gunicorn's handlers to the uvicorn loggers.
            **{
                name: {"handlers": ["default"], "propagate": False, "level": level.upper()}
                for name in ("gunicorn.error", "gunicorn.access")
            },
            **{
                name: {"handlers": [], "propagate": True}
                for name in ("uvicorn", "uvicorn.error", "uvicorn.access")
            },
        },
    }


def configure_logging(
    log_format: str = "json", level: str = "info", fields: dict[str, Any] | None = None
) -> None:
    logging.config.dictConfig(logging_config(log_format, level, fields))
    shared = [*_SHARED, _stamp(fields)] if fields else _SHARED
    structlog.configure(
        processors=[*shared, structlog.stdlib.ProcessorFormatter.wrap_for_formatter],
        logger_factory=structlog.stdlib.LoggerFactory(),
        wrapper_class=structlog.stdlib.BoundLogger,
        cache_logger_on_first_use=True,
    )
