"""Request deadlines without a server: the operator's bound and the request's own (the smaller wins), the
`X-Request-Timeout` header and /ws `params.timeout` as they are read, the `timeout` refusal's shapes, and a
reply cut at its deadline finishing `timeout`, counted once."""

from __future__ import annotations

import asyncio
import json
import time
from collections.abc import AsyncIterator

import pytest
from prometheus_client import REGISTRY
from pydantic import ValidationError

from qwen_chat.chat.deadline import effective_timeout, timed_out
from qwen_chat.chat.stop_strings import StopStrings
from qwen_chat.chat.stream import ChatStream
from qwen_chat.engine.api.interface import Finished, GenerationEvent, GenerationRequest, TextDelta
from qwen_chat.errors import ErrorCode, Refusal
from qwen_chat.http.deadline import HEADER, parse_timeout
from qwen_chat.metrics import RequestMetrics, Transport
from qwen_chat.sampling_params import DEFAULTS
from qwen_chat.settings import Settings
from qwen_chat.ws.protocol import ProtocolError, parse_frame


@pytest.mark.parametrize(
    ("server", "requested", "bound"),
    [(None, None, None), (30.0, None, 30.0), (None, 5.0, 5.0), (30.0, 5.0, 5.0), (5.0, 30.0, 5.0)],
)
def test_a_request_may_shorten_the_operators_bound_never_lengthen_it(
    server: float | None, requested: float | None, bound: float | None
) -> None:
    assert effective_timeout(server, requested) == bound


@pytest.mark.parametrize(("value", "seconds"), [(None, None), ("30", 30.0), ("2.5", 2.5), (" .5 ", 0.5)])
def test_the_header_is_seconds(value: str | None, seconds: float | None) -> None:
    assert parse_timeout(value) == seconds


@pytest.mark.parametrize("value", ["0", "0.0", "-1", "", "soon", "nan", "inf", "1e3", "1_0", "5s"])
def test_a_bad_header_is_a_bad_request_naming_it(value: str) -> None:
    with pytest.raises(Refusal) as refused:
        parse_timeout(value)
    refusal = refused.value
    assert refusal.code is ErrorCode.BAD_REQUEST and refusal.param == HEADER and HEADER in refusal.message
    assert refusal.status_for(openai_api=True) == 400  # the seed API answers its 422, as for any bad value
    assert "a number of seconds greater than 0" in refusal.message


@pytest.mark.parametrize(
    ("timeout", "complaint"), [(0, "greater than 0"), (-2, "greater than 0"), ("9", "number")]
)
def test_a_bad_ws_timeout_is_a_bad_request_naming_it(timeout: object, complaint: str) -> None:
    frame = {"type": "chat", "id": "m", "content": "hi", "params": {"timeout": timeout}}
    assert parse_frame(json.dumps({**frame, "params": {"timeout": 1.5}})).params.timeout == 1.5  # type: ignore[union-attr]
    with pytest.raises(ProtocolError) as refused:
        parse_frame(json.dumps(frame))
    assert refused.value.message_id == "m" and refused.value.message.startswith("params.timeout: ")
    assert complaint in refused.value.message
    with pytest.raises(ProtocolError, match=r"params\.timeout: Input should be a finite number"):
        parse_frame('{"type": "chat", "content": "hi", "params": {"timeout": NaN}}')


def test_the_server_setting_is_off_unless_set_and_validated(monkeypatch: pytest.MonkeyPatch) -> None:
    assert Settings().request_timeout is None
    for off in ("0", ""):
        monkeypatch.setenv("QWEN_CHAT_REQUEST_TIMEOUT", off)
        assert Settings().request_timeout is None
    monkeypatch.setenv("QWEN_CHAT_REQUEST_TIMEOUT", "120")
    assert Settings().request_timeout == 120.0
    for wrong in ("-1", "nan", "soon"):
        monkeypatch.setenv("QWEN_CHAT_REQUEST_TIMEOUT", wrong)
        with pytest.raises(ValidationError, match="request_timeout"):
            Settings()


def test_the_timeout_is_a_504_that_the_sdk_does_not_retry() -> None:
    refusal = timed_out(2.5)
    assert refusal.code.outcome == "timeout" and "2.5 s" in refusal.message
    response = refusal.openai_response(openai_api=True)
    assert response.status_code == 504 and response.headers["x-should-retry"] == "false"
    assert json.loads(response.body)["error"] == {
        "message": "the reply did not finish within its deadline of 2.5 s",
        "type": "server_error",
        "param": None,
        "code": "timeout",
    }
    assert refusal.ws_frame("m")["code"] == "timeout"


class Endless:
    """An engine's reply that streams a token every 10 ms until it is aborted, then finishes `cancelled`."""

    def __init__(self, winding_down: float = 0.0) -> None:
        self.aborted = asyncio.Event()
        self.winding_down = winding_down  # seconds from the abort to the finish (a decode step, a busy loop)

    def abort(self, request_id: str) -> None:
        self.aborted.set()

    async def events(self) -> AsyncIterator[GenerationEvent]:
        sent = 0
        while not self.aborted.is_set():
            sent += 1
            yield TextDelta("x", sent)
            await asyncio.sleep(0.01)
        await asyncio.sleep(self.winding_down)
        yield Finished("cancelled", 2, sent, 0.0, 0.01)


def _timeouts(model: str) -> float:
    labels = {"model": model, "transport": "ws", "outcome": "timeout"}
    return REGISTRY.get_sample_value("qwen_chat_requests_total", labels) or 0.0


async def _read(
    seconds: float, model: str, why: Refusal | None = None, cancelled: bool = False, winding_down: float = 0.0
) -> tuple[list[object], float]:
    engine = Endless(winding_down)
    usage = RequestMetrics(model, Transport.WS)
    request = GenerationRequest("r1", [1, 2], DEFAULTS)
    stream = ChatStream(engine, request, [], 0, usage, StopStrings([]), engine.events())  # type: ignore[arg-type]
    stream.expire_after(seconds)
    if why is not None or cancelled:  # the drain (`why`) or the client cut it first: that is what it says
        asyncio.get_running_loop().call_later(0.05, stream.cancel, why)
    events = [event async for event in stream.events()]
    return events, time.perf_counter() - usage.received


def test_a_reply_past_its_deadline_finishes_timeout_counted_once() -> None:
    before = _timeouts("deadline-unit")
    events, took = asyncio.run(_read(0.2, "deadline-unit"))
    finished = events[-1]
    assert isinstance(finished, Finished) and finished.reason == "timeout" and finished.completion_tokens > 1
    assert 0.2 <= took < 1.0
    assert _timeouts("deadline-unit") - before == 1


def test_a_reply_the_drain_cut_first_stays_cancelled() -> None:
    draining = Refusal(ErrorCode.OVERLOADED, "the server is shutting down")
    events, _ = asyncio.run(_read(0.5, "deadline-unit-drain", draining))
    finished = events[-1]
    assert isinstance(finished, Finished) and finished.reason == "cancelled"


def test_a_reply_its_client_cancelled_stays_cancelled_if_the_deadline_passes_before_it_ends() -> None:
    events, _ = asyncio.run(_read(0.1, "deadline-unit-client", cancelled=True, winding_down=0.2))
    finished = events[-1]
    assert isinstance(finished, Finished) and finished.reason == "cancelled"


def test_a_reply_that_finishes_in_time_disarms_its_deadline() -> None:
    async def whole() -> AsyncIterator[GenerationEvent]:
        yield TextDelta("done", 1)
        yield Finished("length", 2, 1, 0.0, 0.01)

    async def read() -> tuple[list[object], ChatStream]:
        usage = RequestMetrics("deadline-unit-whole", Transport.WS)
        request = GenerationRequest("r1", [1, 2], DEFAULTS)
        stream = ChatStream(Endless(), request, [], 0, usage, StopStrings([]), whole())  # type: ignore[arg-type]
        stream.expire_after(30)
        return [event async for event in stream.events()], stream

    events, stream = asyncio.run(read())
    assert isinstance(events[-1], Finished) and events[-1].reason == "length"
    assert stream._deadline is not None and stream._deadline.cancelled()
