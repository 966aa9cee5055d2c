"""The tracing pieces without a server: when the OTEL_* environment turns traces on, what a reply's spans
hold however it ends, and log lines that carry their span's ids."""

from __future__ import annotations

import asyncio
import json
from collections.abc import AsyncIterator, Iterator
from pathlib import Path
from unittest.mock import Mock

import pytest
from opentelemetry.sdk.trace import ReadableSpan, TracerProvider
from opentelemetry.sdk.trace.export import SimpleSpanProcessor
from opentelemetry.sdk.trace.export.in_memory_span_exporter import InMemorySpanExporter
from opentelemetry.trace import StatusCode

from qwen_chat import logging_setup
from qwen_chat.chat.stop_strings import StopStrings
from qwen_chat.chat.stream import ChatStream
from qwen_chat.engine.api.interface import GenerationEvent, GenerationRequest, Queued
from qwen_chat.errors import ErrorCode, Refusal
from qwen_chat.metrics import RequestMetrics, Transport
from qwen_chat.sampling_params import DEFAULTS
from qwen_chat.tracing import TracingConfigError, active, provider, reply, start_reply

ENDPOINT = {"OTEL_EXPORTER_OTLP_ENDPOINT": "http://collector:4318"}


@pytest.mark.parametrize(
    ("environ", "on"),
    [
        ({}, False),
        (ENDPOINT, True),
        ({"OTEL_EXPORTER_OTLP_TRACES_ENDPOINT": "http://collector:4318/v1/traces"}, True),
        ({**ENDPOINT, "OTEL_SDK_DISABLED": "true"}, False),
        ({**ENDPOINT, "OTEL_TRACES_EXPORTER": "none"}, False),
        ({"OTEL_EXPORTER_OTLP_ENDPOINT": " "}, False),
    ],
)
def test_traces_are_on_only_where_an_endpoint_is_set(environ: dict[str, str], on: bool) -> None:
    assert provider.wanted(environ) is on


@pytest.mark.parametrize(
    ("environ", "says"),
    [
        ({**ENDPOINT, "OTEL_EXPORTER_OTLP_PROTOCOL": "grpc"}, "4318"),
        ({**ENDPOINT, "OTEL_EXPORTER_OTLP_TRACES_PROTOCOL": "http/json"}, "http/protobuf or grpc"),
        ({**ENDPOINT, "OTEL_TRACES_EXPORTER": "zipkin"}, "otlp only"),
    ],
)
def test_a_setting_that_cannot_work_is_one_clear_error(environ: dict[str, str], says: str) -> None:
    with pytest.raises(TracingConfigError, match=says):
        provider.check_environment(environ)
    provider.check_environment({**environ, "OTEL_SDK_DISABLED": "true"})  # off: nothing to check


def test_the_exporters_headers_come_from_a_mounted_file(tmp_path: Path) -> None:
    path = tmp_path / "headers"
    path.write_text("authorization=Basic%20dGVuYW50,x-scope-orgid=tenant-a\n")
    assert provider.file_headers(path) == {"authorization": "Basic dGVuYW50", "x-scope-orgid": "tenant-a"}
    assert provider.file_headers(None) == {}
    with pytest.raises(TracingConfigError, match="cannot read"):
        provider.check_environment(ENDPOINT, tmp_path / "missing")
    path.write_text("just a token")
    with pytest.raises(TracingConfigError, match="no `name=value` header"):
        provider.file_headers(path)
    provider.check_environment({}, tmp_path / "missing")  # off: the file is not needed


@pytest.fixture
def exported(monkeypatch: pytest.MonkeyPatch) -> Iterator[InMemorySpanExporter]:
    exporter = InMemorySpanExporter()
    sdk = TracerProvider()
    sdk.add_span_processor(SimpleSpanProcessor(exporter))
    monkeypatch.setattr(provider, "_tracer", sdk.get_tracer("test"))
    yield exporter
    sdk.shutdown()


def by_name(exporter: InMemorySpanExporter) -> dict[str, ReadableSpan]:
    spans = exporter.get_finished_spans()
    assert len({s.name for s in spans}) == len(spans)
    return {s.name: s for s in spans}


def test_off_no_reply_is_traced() -> None:
    assert provider.tracer() is None and start_reply("m", "ws", "alice") is None


def test_log_prompts_puts_the_conversation_on_the_reply_span(exported: InMemorySpanExporter) -> None:
    trace = start_reply("m", "openai", "alice")
    assert trace is not None
    messages = [{"role": "user", "content": "the violet heron"}]
    trace.admitted("r1", 2, 9, DEFAULTS, messages)
    trace.first_token()
    trace.finished("stop", 9, 3, 0.01)
    trace.refused(Refusal(ErrorCode.OVERLOADED, "late"))  # once ended, a span stays as it ended
    spans = by_name(exported)
    assert set(spans) == {"chat m", "queue", "prefill", "decode"}
    chat = spans["chat m"].attributes or {}
    conversation = json.loads(str(chat["gen_ai.input.messages"]))
    assert conversation == [{"role": "user", "parts": [{"type": "text", "content": "the violet heron"}]}]
    assert chat["gen_ai.response.finish_reasons"] == ("stop",) and "error.type" not in chat
    assert (spans["queue"].attributes or {})["qwen_chat.queue_position"] == 2


@pytest.mark.parametrize(
    ("first_token", "outcome", "phases"),
    [(True, "cancelled", {"decode"}), (False, "cancelled", {"queue"}), (True, "error", {"decode"})],
)
def test_a_reply_cut_short_keeps_what_is_known_of_its_phases(
    exported: InMemorySpanExporter, first_token: bool, outcome: str, phases: set[str]
) -> None:
    trace = start_reply("m", "ws", "alice")
    assert trace is not None
    trace.admitted("r1", 0, 9, DEFAULTS, None)
    if first_token:
        trace.first_token()
    trace.ended(outcome)
    spans = by_name(exported)
    chat = spans.pop("chat m")
    assert set(spans) == phases
    assert "gen_ai.input.messages" not in (chat.attributes or {})
    failed = chat.status.status_code is StatusCode.ERROR
    assert failed is (outcome == "error")


def test_a_refusal_names_its_cause_and_a_server_fault_is_an_error(exported: InMemorySpanExporter) -> None:
    for refusal in (
        Refusal(ErrorCode.RATE_LIMITED, "cap", cause="user_requests"),
        Refusal(ErrorCode.OVERLOADED, "queue full"),
        Refusal(ErrorCode.OVERLOADED, "shutting down", cause="draining"),
    ):
        trace = start_reply("m", "sse", "alice")
        assert trace is not None
        trace.refused(refusal)
    capped, full, draining = exported.get_finished_spans()
    assert draining.status.status_code is StatusCode.UNSET, "a rollout refuses by design"
    assert (capped.attributes or {})["error.type"] == "user_requests"
    assert capped.status.status_code is StatusCode.UNSET  # the client's to change: not the server's error
    assert (full.attributes or {})[
        "error.type"
    ] == "overloaded" and full.status.status_code is StatusCode.ERROR


def test_log_lines_carry_the_ids_of_the_span_they_are_written_in(exported: InMemorySpanExporter) -> None:
    trace = start_reply("m", "ws", "alice")
    assert trace is not None
    with active(trace):
        line = logging_setup._add_trace_ids(None, "info", {"event": "chat_done"})
    context = trace.span.get_span_context()
    assert line["trace_id"] == format(context.trace_id, "032x") and len(line["trace_id"]) == 32
    assert line["span_id"] == format(context.span_id, "016x")
    assert "trace_id" not in logging_setup._add_trace_ids(None, "info", {"event": "outside"})
    assert reply.extract({}) is not None  # on: a handshake without traceparent parents nothing, but parses


def test_a_reply_closed_before_it_streamed_is_cancelled_and_its_span_ends(
    exported: InMemorySpanExporter,
) -> None:
    """A client gone before the first frame (an SSE stream closed at its first chunk, a /ws start frame
    that could not be sent): the transport only closes the stream, and that counts and ends it."""

    async def events() -> AsyncIterator[GenerationEvent]:
        yield Queued(0)

    usage = RequestMetrics("m", Transport.OPENAI, trace=start_reply("m", "openai", "alice"))
    request = GenerationRequest("r1", [1, 2], DEFAULTS)
    stream = ChatStream(Mock(), request, [], 0, usage, StopStrings([]), events())
    asyncio.run(stream.aclose())
    asyncio.run(stream.aclose())  # a second close counts nothing more
    assert usage.done
    (chat,) = exported.get_finished_spans()
    assert (chat.attributes or {})["gen_ai.response.finish_reasons"] == ("cancelled",)
