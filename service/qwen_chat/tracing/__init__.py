"""OpenTelemetry traces of chat replies, off unless an OTLP endpoint is configured (`setup.py`); the spans
of one reply (`reply.py`)."""

from qwen_chat.tracing.reply import ReplyTrace, active, extract, start_reply
from qwen_chat.tracing.setup import TracingConfigError, check_environment, configure, shutdown, tracer

__all__ = [
    "ReplyTrace",
    "TracingConfigError",
    "active",
    "check_environment",
    "configure",
    "extract",
    "shutdown",
    "start_reply",
    "tracer",
]
