"""OpenTelemetry traces of chat replies, off unless an OTLP endpoint is configured (`provider.py`); the spans
of one reply (`reply.py`)."""

from qwen_chat.tracing.provider import TracingConfigError, check_environment, configure, shutdown, tracer
from qwen_chat.tracing.reply import ReplyTrace, active, ended_by_exception, extract, start_reply

__all__ = [
    "ReplyTrace",
    "TracingConfigError",
    "active",
    "check_environment",
    "configure",
    "ended_by_exception",
    "extract",
    "shutdown",
    "start_reply",
    "tracer",
]
