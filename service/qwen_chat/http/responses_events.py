"""One reply as a Responses API response: its output items (a reasoning item, a message, function calls),
built as the reply's deltas arrive, and the events a stream sends on the way.

The stream's events are OpenAI's: `response.created` and `response.in_progress`, then for each item
`response.output_item.added`, its content part (`response.content_part.added`), its deltas, their `.done`,
and `response.output_item.done`; then `response.completed`, or `response.incomplete` when the reply reached
`max_output_tokens`, or `error` and `response.failed`. Every event has the next `sequence_number`, and an
item's events carry its `output_index` and id, as the `openai` SDK's `responses.stream()` checks. A reply
that is not streamed is built the same way, its events unsent.
"""

from __future__ import annotations

import time
import uuid
from typing import Any

from qwen_chat.chat.reasoning import ReasoningDelta
from qwen_chat.chat.tool_calls import ToolCall, ToolCallDelta
from qwen_chat.engine.api.interface import Finished, TextDelta
from qwen_chat.errors import Refusal

Event = dict[str, Any]


def _id(prefix: str) -> str:
    return f"{prefix}_{uuid.uuid4().hex}"


class ResponseBuilder:
    """The response's fields (`echo`: what the request asked, as OpenAI repeats it) and its output so far."""

    def __init__(self, model: str, echo: dict[str, Any]) -> None:
        self.fields = {"id": _id("resp"), "object": "response", "created_at": int(time.time())}
        self.fields["model"] = model
        self.echo = echo
        self.output: list[dict[str, Any]] = []  # the items whose `.done` was sent
        self._sequence = 0
        self._open: dict[str, Any] | None = None  # the item whose deltas arrive now
        self._kind: str | None = None  # its content's type: reasoning_text or output_text
        self._blank = ""  # whitespace before any answer: an answer only if nothing else comes
        self._calls = 0
        self._reasoning_tokens = 0

    def response(self, status: str, **fields: Any) -> dict[str, Any]:
        body = {**self.fields, "status": status, "output": list(self.output), "error": None}
        return {**body, "incomplete_details": None, "usage": None, **self.echo, **fields}

    def _event(self, kind: str, **fields: Any) -> Event:
        event = {"type": kind, "sequence_number": self._sequence, **fields}
        self._sequence += 1
        return event

    def start(self) -> list[Event]:
        return [
            self._event("response.created", response=self.response("in_progress")),
            self._event("response.in_progress", response=self.response("in_progress")),
        ]

    def feed(self, delta: ReasoningDelta | TextDelta | ToolCallDelta) -> list[Event]:
        """The events for one delta of the reply (none for whitespace that may not be an answer)."""
        if isinstance(delta, ToolCallDelta):
            self._blank = ""
            return self._close() + self._call(delta.call)
        if isinstance(delta, ReasoningDelta):
            self._reasoning_tokens = delta.completion_tokens
            return self._text("reasoning", "reasoning_text", delta.text)
        if self._kind != "output_text" and not (self._blank + delta.text).strip():
            self._blank += delta.text
            return []
        text, self._blank = self._blank + delta.text, ""
        return self._text("message", "output_text", text)

    def finish(self, finished: Finished) -> list[Event]:
        """The last events: the open item closed, then the whole response, `completed` or (its token limit
        reached) `incomplete`."""
        events = []
        if self._kind != "output_text" and not self._calls:  # a reply with no call always has a message
            events += self._text("message", "output_text", self._blank)
        whole = finished.reason != "length"
        events += self._close("completed" if whole else "incomplete")
        usage = {
            "input_tokens": finished.prompt_tokens,
            "input_tokens_details": {"cached_tokens": finished.cached_tokens},
            "output_tokens": finished.completion_tokens,
            "output_tokens_details": {"reasoning_tokens": self._reasoning_tokens},
            "total_tokens": finished.prompt_tokens + finished.completion_tokens,
        }
        if whole:
            body = self.response("completed", usage=usage)
            return [*events, self._event("response.completed", response=body)]
        details = {"reason": "max_output_tokens"}
        body = self.response("incomplete", usage=usage, incomplete_details=details)
        return [*events, self._event("response.incomplete", response=body)]

    def failed(self, refusal: Refusal) -> list[Event]:
        """A reply that ended early (the engine failed, or the server cut it short): OpenAI's `error` event,
        then the response `failed`, with what it had."""
        error = {"code": refusal.code.openai, "message": refusal.message}
        events = self._close("incomplete")
        events.append(self._event("error", **error, param=None))
        events.append(self._event("response.failed", response=self.response("failed", error=error)))
        return events

    def _text(self, item_type: str, kind: str, text: str) -> list[Event]:
        events = [] if self._kind == kind else self._close() + self._add(item_type, kind)
        assert self._open is not None
        part = self._open["content"][0]
        part["text"] += text
        where = {"item_id": self._open["id"], "output_index": len(self.output), "content_index": 0}
        extra: dict[str, Any] = {"logprobs": []} if kind == "output_text" else {}
        return [*events, self._event(f"response.{kind}.delta", **where, delta=text, **extra)]

    def _add(self, item_type: str, kind: str) -> list[Event]:
        if item_type == "reasoning":
            item = {"id": _id("rs"), "type": "reasoning", "summary": [], "content": []}
            part: dict[str, Any] = {"type": "reasoning_text", "text": ""}
        else:
            item = {"id": _id("msg"), "type": "message", "role": "assistant", "content": []}
            part = {"type": "output_text", "text": "", "annotations": [], "logprobs": []}
        self._open, self._kind = {**item, "status": "in_progress"}, kind
        where = {"item_id": item["id"], "output_index": len(self.output), "content_index": 0}
        shown = _copy(self._open)
        added = self._event("response.output_item.added", output_index=len(self.output), item=shown)
        self._open["content"].append(part)
        return [added, self._event("response.content_part.added", **where, part=dict(part))]

    def _close(self, status: str = "completed") -> list[Event]:
        if self._open is None:
            return []
        item, kind = self._open, self._kind
        self._open = self._kind = None
        item["status"] = status
        part = item["content"][0]
        where = {"item_id": item["id"], "output_index": len(self.output), "content_index": 0}
        extra: dict[str, Any] = {"logprobs": []} if kind == "output_text" else {}
        events = [
            self._event(f"response.{kind}.done", **where, text=part["text"], **extra),
            self._event("response.content_part.done", **where, part=dict(part)),
            self._event("response.output_item.done", output_index=len(self.output), item=_copy(item)),
        ]
        self.output.append(item)
        return events

    def _call(self, call: ToolCall) -> list[Event]:
        self._calls += 1
        item = {"id": _id("fc"), "type": "function_call", "call_id": call.id, "name": call.name}
        index = len(self.output)
        opened = {**item, "arguments": "", "status": "in_progress"}
        done = {**item, "arguments": call.arguments, "status": "completed"}
        where = {"item_id": item["id"], "output_index": index}
        arguments = {"arguments": call.arguments}
        self.output.append(done)
        return [
            self._event("response.output_item.added", output_index=index, item=opened),
            self._event("response.function_call_arguments.delta", **where, delta=call.arguments),
            self._event("response.function_call_arguments.done", **where, name=call.name, **arguments),
            self._event("response.output_item.done", output_index=index, item=dict(done)),
        ]


def _copy(item: dict[str, Any]) -> dict[str, Any]:
    """An item as it stands: its content parts copied, as they grow after the event is built."""
    return {**item, "content": [dict(part) for part in item.get("content", [])]}
