"""Prometheus metrics (prefix `qwen_chat_`), correct across gunicorn workers. The room's map:

- `series.py`: every series of the service, the registry `/metrics` reads, and multiprocess mode
- `engine.py`: the engine's series (KV cache, decode steps, restarts, what it runs with)
- `request.py`: what one chat request records as it is answered
- `model_server_protocol.py`: the vLLM names the Gateway API Inference Extension's picker reads

Everything is imported from here: `from qwen_chat.metrics import REQUESTS, RequestMetrics`.
"""

from __future__ import annotations

from qwen_chat.metrics import engine as engine
from qwen_chat.metrics.engine import ENGINE_RESTARTS as ENGINE_RESTARTS
from qwen_chat.metrics.engine import EngineStepMetrics as EngineStepMetrics
from qwen_chat.metrics.engine import publish_facts as publish_facts
from qwen_chat.metrics.model_server_protocol import WithAliases as WithAliases
from qwen_chat.metrics.request import ReplySpans as ReplySpans
from qwen_chat.metrics.request import RequestMetrics as RequestMetrics
from qwen_chat.metrics.series import *  # noqa: F403 (the series, by name)
from qwen_chat.metrics.series import publish_request_zeros


def publish_zeros(model: str) -> None:
    """Every series of `model` at 0 from the start: the request series and the engine's."""
    publish_request_zeros(model)
    engine.publish_zeros(model)
