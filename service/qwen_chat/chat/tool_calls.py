"""Tool calls in a reply: `<tool_call>` ... `</tool_call>` blocks, found wherever the deltas split markers.
A block's body is read in either of Qwen's formats, by its shape: Hermes JSON `{"name": ..., "arguments":
{...}}` (Qwen2.5, Qwen3, Qwen3-Next; vLLM's `hermes` parser) or Qwen3.5's XML `<function=NAME>` with
`<parameter=KEY>` values (Qwen3.5/3.6/3.8, Qwen3-Coder; vLLM's `qwen3_coder`, read in xml_tool_calls.py, its
values typed by the tools' schemas). Which one a model writes is its template's (engine/model/prompts.py).

`ToolCallParser` feeds on the answer's text and hands out plain text and whole `ToolCall`s:
- outside a block, text is passed on except a tail that may be the start of `<tool_call>` (held back until
  the next delta says whether it was one);
- inside a block, text is held until `</tool_call>`; a block whose body is a call becomes a `ToolCall`,
  anything else is given back as the text it was (so nothing the model said is lost);
- a reply cut off inside a block gives that block back as text too.
A call's name is not checked against the tools (as vLLM's parsers do not): the client sees what was called.
With `whole_json` (tool_choice `required` or a named function, where a grammar made the reply calls only)
a reply that opens with `{` or `[` is JSON (one call or a list of calls), read at its end; one that opens
with `<` is `<tool_call>` blocks (the XML format's grammar), read as they come. Whitespace around calls is
dropped.
"""

from __future__ import annotations

import json
import uuid
from dataclasses import dataclass, field
from typing import Any

from qwen_chat.chat.xml_tool_calls import is_xml_body, read_xml_call

OPEN, CLOSE = "<tool_call>", "</tool_call>"


@dataclass(frozen=True)
class ToolCall:
    name: str
    arguments: str  # a JSON object's text, as OpenAI sends it
    id: str = field(default_factory=lambda: f"call_{uuid.uuid4().hex[:24]}")

    def openai(self) -> dict[str, object]:
        return {
            "id": self.id,
            "type": "function",
            "function": {"name": self.name, "arguments": self.arguments},
        }


@dataclass(frozen=True)
class ToolCallDelta:
    """One whole tool call, the `index`-th of its reply."""

    call: ToolCall
    index: int
    completion_tokens: int


def read_call(text: str) -> ToolCall | None:
    """A `{"name": ..., "arguments": {...}}` object as a call; None when `text` is not one."""
    try:
        data = json.loads(text)
    except (ValueError, RecursionError):  # a model stuck writing `[` nests past the decoder's depth
        return None
    if not isinstance(data, dict) or not isinstance(data.get("name"), str):
        return None
    arguments = data.get("arguments", data.get("parameters", {}))
    if isinstance(arguments, str):
        try:
            arguments = json.loads(arguments)
        except (ValueError, RecursionError):
            return None
    if not isinstance(arguments, dict):
        return None
    return ToolCall(data["name"], json.dumps(arguments, ensure_ascii=False))


def read_body(body: str, tools: list[dict[str, Any]] | None = None) -> ToolCall | None:
    """A block's body as a call, in whichever format it is written; None when it is not one."""
    if is_xml_body(body):
        read = read_xml_call(body, tools)
        return None if read is None else ToolCall(*read)
    return read_call(body.strip())


def _held_prefix(text: str, marker: str) -> int:
    return max((n for n in range(1, len(marker)) if text.endswith(marker[:n])), default=0)


class ToolCallParser:
    def __init__(
        self, parallel: bool = True, whole_json: bool = False, tools: list[dict[str, Any]] | None = None
    ) -> None:
        self._parallel = parallel
        self._whole_json = whole_json
        self._tools = tools  # OpenAI's tool objects: their schemas type XML parameter values
        self._inside = False
        self._buffer = ""  # held text: a possible marker start outside a block, the body inside one
        self._pending_space = ""  # trailing whitespace held back: dropped when a call follows it
        self._framing = ""  # the whitespace before the open block
        self.calls: list[ToolCall] = []

    def feed(self, text: str) -> list[str | ToolCall]:
        self._buffer += text
        if self._whole_json and self._buffer.lstrip().startswith("<"):  # the XML format's forced blocks
            self._whole_json = False
        return [] if self._whole_json else self._scan(final=False)

    def flush(self) -> list[str | ToolCall]:
        if self._whole_json:
            return self._read_whole()
        return self._scan(final=True)

    @property
    def done(self) -> bool:
        """No more calls are wanted (`parallel_tool_calls` false and one made): the rest is dropped."""
        return bool(self.calls) and not self._parallel

    def _scan(self, final: bool) -> list[str | ToolCall]:
        out: list[str | ToolCall] = []
        while True:
            if self.done:  # one call only: the rest of the reply is dropped
                self._buffer = ""
                return out
            if self._inside:
                end = self._buffer.find(CLOSE)
                if end < 0:
                    if final:  # cut off inside a block: it was text after all
                        self._text(out, self._framing + OPEN + self._buffer)
                        self._buffer, self._inside = "", False
                    return out
                body, self._buffer = self._buffer[:end], self._buffer[end + len(CLOSE) :]
                self._inside = False
                call = read_body(body, self._tools)
                if call is None:
                    self._text(out, self._framing + OPEN + body + CLOSE)
                else:
                    self.calls.append(call)
                    self._pending_space = ""
                    out.append(call)
                continue
            start = self._buffer.find(OPEN)
            if start >= 0:
                before, self._buffer = self._buffer[:start], self._buffer[start + len(OPEN) :]
                self._text(out, before)
                # The whitespace before the block: dropped if it is a call, given back if it is text.
                self._framing, self._pending_space = self._pending_space, ""
                self._inside = True
                continue
            keep = 0 if final else _held_prefix(self._buffer, OPEN)
            ready = self._buffer[: len(self._buffer) - keep]
            self._buffer = self._buffer[len(ready) :]
            self._text(out, ready)
            if final and not self.calls and self._pending_space:  # no call: the reply's text exactly
                out.append(self._pending_space)
                self._pending_space = ""
            return out

    def _text(self, out: list[str | ToolCall], text: str) -> None:
        """Pass text on, holding back trailing whitespace: it is dropped if a call follows."""
        if not text:
            return
        text = self._pending_space + text
        body = text.rstrip()
        self._pending_space = text[len(body) :]
        if body:
            out.append(body)

    def _read_whole(self) -> list[str | ToolCall]:
        text, self._buffer = self._buffer, ""
        try:
            data = json.loads(text)
        except (ValueError, RecursionError):
            return [text] if text else []
        items = data if isinstance(data, list) else [data]
        calls = [read_call(json.dumps(item)) for item in items]
        if not calls or any(call is None for call in calls):
            return [text]
        self.calls = [call for call in calls if call is not None]
        return list(self.calls)
