"""Turning traces on: one tracer provider per worker process, configured by the standard OTEL_* environment.

Traces are on when an OTLP endpoint is set (`OTEL_EXPORTER_OTLP_ENDPOINT`, or the traces-only
`OTEL_EXPORTER_OTLP_TRACES_ENDPOINT`), unless `OTEL_SDK_DISABLED=true` or `OTEL_TRACES_EXPORTER=none`.
The SDK itself reads the rest: `OTEL_SERVICE_NAME` and `OTEL_RESOURCE_ATTRIBUTES`, the sampler
(`OTEL_TRACES_SAMPLER`, `OTEL_TRACES_SAMPLER_ARG`), the exporter's headers, timeout, compression and
certificates (`OTEL_EXPORTER_OTLP_*`) and the batch processor's (`OTEL_BSP_*`). Headers that hold
credentials can come from a mounted Secret file instead (QWEN_CHAT_OTLP_HEADERS_FILE). Spans go out over
OTLP/HTTP (protobuf); `grpc` is taken where its exporter is installed.

Off, nothing is imported beyond the API, no middleware is added, and `tracer()` is None: a request pays
a few `is None` checks (bench/tracing_cost.py measures on against off).
"""

from __future__ import annotations

import importlib.metadata
import importlib.util
import os
import threading
from collections.abc import Mapping
from pathlib import Path
from typing import TYPE_CHECKING, Any

from qwen_chat.logging_setup import redact

if TYPE_CHECKING:
    from fastapi import FastAPI
    from opentelemetry.sdk.trace import TracerProvider
    from opentelemetry.trace import Span, Tracer

ENDPOINTS = ("OTEL_EXPORTER_OTLP_TRACES_ENDPOINT", "OTEL_EXPORTER_OTLP_ENDPOINT")
PROTOCOLS = ("OTEL_EXPORTER_OTLP_TRACES_PROTOCOL", "OTEL_EXPORTER_OTLP_PROTOCOL")
DEFAULT_SERVICE_NAME = "qwen-chat"
# Probes, scrapes and the page's files are not requests anyone traces; /ws gets a span per chat message
# instead of one for the whole connection (ws/router.py).
NOT_TRACED = "/livez$,/readyz$,/health$,/metrics$,/ws$,/static/,/favicon"
# Headers that never reach a span, even when OTEL_INSTRUMENTATION_HTTP_CAPTURE_HEADERS_SERVER_REQUEST asks.
SECRET_HEADERS = ["authorization", "proxy-authorization", "cookie", "sec-websocket-protocol", "x-api-key"]
SHUTDOWN_SECONDS = 5.0


class TracingConfigError(ValueError):
    """The OTEL_* environment asks for something this server cannot do."""


_provider: TracerProvider | None = None
_tracer: Tracer | None = None


def wanted(environ: Mapping[str, str] = os.environ) -> bool:
    """Whether the environment turns traces on."""
    if environ.get("OTEL_SDK_DISABLED", "").strip().lower() == "true":
        return False
    if environ.get("OTEL_TRACES_EXPORTER", "otlp").strip().lower() == "none":
        return False
    return any(environ.get(name, "").strip() for name in ENDPOINTS)


def protocol(environ: Mapping[str, str] = os.environ) -> str:
    """The OTLP protocol traces use; raises `TracingConfigError` for one that cannot work here."""
    exporter = environ.get("OTEL_TRACES_EXPORTER", "otlp").strip().lower()
    if exporter != "otlp":
        raise TracingConfigError(
            f"OTEL_TRACES_EXPORTER={exporter}: this server exports traces over otlp only"
        )
    chosen = next((environ[name].strip() for name in PROTOCOLS if environ.get(name, "").strip()), None)
    chosen = chosen or "http/protobuf"
    if chosen == "grpc":
        if importlib.util.find_spec("opentelemetry.exporter.otlp.proto.grpc") is None:
            raise TracingConfigError(
                "OTEL_EXPORTER_OTLP_PROTOCOL=grpc needs the opentelemetry-exporter-otlp-proto-grpc package;"
                " or use http/protobuf (the collector's port 4318)"
            )
    elif chosen != "http/protobuf":
        raise TracingConfigError(f"OTEL_EXPORTER_OTLP_PROTOCOL={chosen}: use http/protobuf or grpc")
    return chosen


def check_environment(environ: Mapping[str, str] = os.environ, headers_file: Path | None = None) -> None:
    """For `qwen-chat serve`, before any worker starts: a wrong OTEL_* setting is one clear line."""
    if wanted(environ):
        protocol(environ)
        file_headers(headers_file)


def file_headers(path: Path | None) -> dict[str, str]:
    """The exporter's headers from QWEN_CHAT_OTLP_HEADERS_FILE (a mounted Secret), in the form of
    OTEL_EXPORTER_OTLP_HEADERS: `name=value,name2=value2`. They add to (and win over) that variable's."""
    if path is None:
        return {}
    from opentelemetry.util.re import parse_env_headers

    try:
        text = path.read_text().strip()
    except OSError as exc:
        raise TracingConfigError(f"QWEN_CHAT_OTLP_HEADERS_FILE: cannot read {path}: {exc.strerror}") from None
    headers = dict(parse_env_headers(text, liberal=True))
    if text and not headers:
        raise TracingConfigError(f"QWEN_CHAT_OTLP_HEADERS_FILE: {path} holds no `name=value` header")
    return headers


def tracer() -> Tracer | None:
    """This process's tracer; None while traces are off."""
    return _tracer


def configure(app: FastAPI, headers_file: Path | None = None) -> TracerProvider | None:
    """Turn traces on for this worker's `app` when the environment asks: HTTP requests through FastAPI's
    instrumentation, chat replies through `tracer()`. Called in each worker (its exporter's thread does
    not survive a fork); `shutdown` flushes what is left."""
    global _provider, _tracer
    if not wanted():
        return None
    from opentelemetry.instrumentation.fastapi import FastAPIInstrumentor
    from opentelemetry.sdk.resources import SERVICE_NAME, SERVICE_VERSION, Resource
    from opentelemetry.sdk.trace import TracerProvider
    from opentelemetry.sdk.trace.export import BatchSpanProcessor

    resource = Resource.create({SERVICE_VERSION: importlib.metadata.version("qwen-chat")})
    if str(resource.attributes.get(SERVICE_NAME, "")).startswith("unknown_service"):
        resource = resource.merge(Resource({SERVICE_NAME: DEFAULT_SERVICE_NAME}))
    provider = TracerProvider(resource=resource)  # the sampler comes from OTEL_TRACES_SAMPLER
    provider.add_span_processor(BatchSpanProcessor(_exporter(protocol(), file_headers(headers_file))))
    environ = os.environ
    # Ours, and the operator's own (passing ours would otherwise replace what these variables say).
    excluded = environ.get("OTEL_PYTHON_FASTAPI_EXCLUDED_URLS") or environ.get("OTEL_PYTHON_EXCLUDED_URLS")
    sanitized = environ.get("OTEL_INSTRUMENTATION_HTTP_CAPTURE_HEADERS_SANITIZE_FIELDS", "")
    FastAPIInstrumentor.instrument_app(
        app,
        tracer_provider=provider,
        excluded_urls=",".join(filter(None, [NOT_TRACED, excluded])),
        exclude_spans=["receive", "send"],  # not a span per body chunk of a streamed reply
        server_request_hook=_redact_url,
        http_capture_headers_sanitize_fields=[*SECRET_HEADERS, *filter(None, sanitized.split(","))],
    )
    _provider, _tracer = provider, provider.get_tracer("qwen_chat")
    return provider


def shutdown(timeout: float = SHUTDOWN_SECONDS) -> None:
    """Export the spans still buffered (a draining worker's last replies), then stop tracing. Waits at most
    `timeout` seconds: a collector that is down must not hold a worker past gunicorn's graceful timeout."""
    global _provider, _tracer
    provider, _provider, _tracer = _provider, None, None
    if provider is not None:
        flushing = threading.Thread(target=provider.shutdown, name="otel-shutdown", daemon=True)
        flushing.start()
        flushing.join(timeout)


def _exporter(chosen: str, extra: dict[str, str]) -> Any:
    """The OTLP exporter: endpoint, timeout and compression from OTEL_EXPORTER_OTLP_*; its headers are the
    variables' with the file's added (the gRPC exporter takes only the headers it is given, so the
    variables' are read here for both)."""
    from opentelemetry.util.re import parse_env_headers

    environ = os.environ
    named = environ.get("OTEL_EXPORTER_OTLP_TRACES_HEADERS") or environ.get("OTEL_EXPORTER_OTLP_HEADERS", "")
    headers = {**parse_env_headers(named, liberal=True), **extra} or None
    if chosen == "grpc":
        from opentelemetry.exporter.otlp.proto.grpc.trace_exporter import OTLPSpanExporter as GrpcExporter

        return GrpcExporter(headers=headers)
    from opentelemetry.exporter.otlp.proto.http.trace_exporter import OTLPSpanExporter

    return OTLPSpanExporter(headers=headers)


# The instrumentation records the URL with its query; seed-style query auth (`?secret=`) puts a key there.
_URL_ATTRIBUTES = ("http.url", "url.full", "http.target", "url.query")


def _redact_url(span: Span, scope: dict[str, Any]) -> None:
    if not scope.get("query_string") or not span.is_recording():
        return
    attributes = getattr(span, "attributes", None) or {}
    for name in _URL_ATTRIBUTES:
        value = attributes.get(name)
        if isinstance(value, str):
            span.set_attribute(name, redact(value))
