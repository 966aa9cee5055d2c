"""The `input` of `POST /v1/responses`: its items (messages, function calls and their outputs, reasoning),
and the conversation they become for the chat template.

A response's own `output` items are valid input, so `input=previous.output + [...]` works: the fields an
output item carries (`id`, `status`, `annotations` ...) are declared and ignored. Anything else undeclared is
a 400 naming it, as on the other `/v1` bodies.
"""

from __future__ import annotations

import json
from typing import Annotated, Any, Literal

from pydantic import Discriminator, Field, Tag, field_validator, model_validator

from qwen_chat.engine.model.prompts import Message
from qwen_chat.http.openai_schema import Body, Text, json_object_text, text_only


class InputText(Body):
    type: Literal["input_text", "output_text", "text"]
    text: Text
    annotations: list[Any] | None = None  # an output part fed back: ignored
    logprobs: list[Any] | None = None  # likewise

    @model_validator(mode="before")
    @classmethod
    def _text_only(cls, data: Any) -> Any:
        return text_only(data)


class RefusalPart(Body):
    type: Literal["refusal"]
    refusal: Text


class MessageItem(Body):
    type: Literal["message"] = "message"
    role: Literal["user", "system", "developer", "assistant"]
    content: Text | list[InputText | RefusalPart]
    id: str | None = None  # an output item fed back: ignored
    status: str | None = None
    phase: str | None = None

    def text(self) -> str:
        if isinstance(self.content, str):
            return self.content
        return "".join(part.text if isinstance(part, InputText) else part.refusal for part in self.content)


class FunctionCallItem(Body):
    type: Literal["function_call"]
    call_id: str
    name: str
    arguments: Text  # a JSON object's text
    id: str | None = None
    status: str | None = None

    @field_validator("arguments")
    @classmethod
    def _json_object(cls, value: str) -> str:
        return json_object_text(value)


class FunctionCallOutputItem(Body):
    type: Literal["function_call_output"]
    call_id: str
    output: Text | list[InputText]
    id: str | None = None
    status: str | None = None

    def text(self) -> str:
        return self.output if isinstance(self.output, str) else "".join(p.text for p in self.output)


class ReasoningText(Body):
    type: Literal["reasoning_text", "summary_text"]
    text: Text


class ReasoningItem(Body):
    """A reasoning item fed back: its thinking goes to the next assistant turn (the template decides whether
    the prompt replays it)."""

    type: Literal["reasoning"]
    id: str | None = None
    summary: list[ReasoningText] = Field(default_factory=list)
    content: list[ReasoningText] | None = None
    encrypted_content: None = None  # nothing is encrypted here, so nothing encrypted can be read back
    status: str | None = None

    def text(self) -> str:
        return "".join(part.text for part in self.content or self.summary)


_ITEMS = ("message", "function_call", "function_call_output", "reasoning")


def _item_kind(data: Any) -> str:
    """An input item's type (a message may leave it out), as the union's discriminator."""
    kind = data.get("type") if isinstance(data, dict) else getattr(data, "type", None)
    return str(kind or "message")  # null is absent, as everywhere in the body


def check_kind(data: Any) -> None:
    """Refuses, by name, an item the service cannot take (before the union reports every branch)."""
    kind = _item_kind(data)
    if kind == "item_reference":
        raise ValueError("an item_reference needs a stored response: qwen-chat stores none (send the item)")
    if kind not in _ITEMS:
        raise ValueError(f"an input item of type {kind!r} is not supported; send one of {', '.join(_ITEMS)}")


InputItem = Annotated[
    Annotated[MessageItem, Tag("message")]
    | Annotated[FunctionCallItem, Tag("function_call")]
    | Annotated[FunctionCallOutputItem, Tag("function_call_output")]
    | Annotated[ReasoningItem, Tag("reasoning")],
    Discriminator(_item_kind),
]


def as_messages(items: list[Any], instructions: str | None) -> list[Message]:
    """The conversation as the chat template reads it: `instructions` as the system turn, items in order
    (a function call joins the assistant turn before it, its output is a tool turn, a reasoning item's
    thinking goes to the assistant turn after it)."""
    messages: list[Message] = []
    thinking: str | None = None
    for item in items:
        if isinstance(item, ReasoningItem):
            thinking = item.text()
        elif isinstance(item, MessageItem):
            role = "system" if item.role == "developer" else item.role
            messages.append({"role": role, "content": item.text()})
        elif isinstance(item, FunctionCallItem):
            call = {"name": item.name, "arguments": json.loads(item.arguments or "{}")}
            if not messages or messages[-1]["role"] != "assistant":
                messages.append({"role": "assistant", "content": ""})
            calls = messages[-1].setdefault("tool_calls", [])
            calls.append({"id": item.call_id, "type": "function", "function": call})
        else:
            messages.append({"role": "tool", "content": item.text(), "tool_call_id": item.call_id})
        if thinking is not None and messages and messages[-1]["role"] == "assistant":
            messages[-1]["reasoning_content"] = thinking
            thinking = None
    if instructions is not None:  # first, and one system turn: Qwen's templates take only one
        if messages and messages[0]["role"] == "system":
            messages[0] = {**messages[0], "content": f"{instructions}\n\n{messages[0]['content']}"}
        else:
            messages.insert(0, {"role": "system", "content": instructions})
    return messages
