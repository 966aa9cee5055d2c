"""The body `POST /v1/responses` accepts, as OpenAI's Responses API defines it, and the conversation it
becomes.

The service is stateless: nothing is stored, so `store: true`, `previous_response_id` and item references
are refused by name. Function tools are served; a built-in tool (web search, file search, code interpreter
...) is refused by name. As on the other `/v1` bodies, anything not declared is a 400 naming the field; the
fields of an output item a client feeds back as input (`id`, `status`, `annotations` ...) are declared and
ignored, so `input=previous.output + [...]` works.
"""

from __future__ import annotations

import json
from typing import Annotated, Any, Literal

from pydantic import Discriminator, Field, Tag, field_validator, model_validator

from qwen_chat.chat.reply_options import (
    FunctionDefinition,
    JsonSchema,
    NamedFunction,
    NamedToolChoice,
    ResponseFormat,
    Tool,
    ToolChoice,
)
from qwen_chat.engine.model.prompts import Message
from qwen_chat.http.openai_schema import Body, Text, json_object_text
from qwen_chat.sampling_params import (
    MaxNewTokens,
    MinP,
    RepetitionPenalty,
    SamplingOverrides,
    Temperature,
    TopK,
    TopP,
)

# Content parts of OpenAI's image, audio and file input: named in the 400, since the service serves text.
_MEDIA = ("input_image", "input_audio", "input_file", "image_url", "input_video")


class InputText(Body):
    type: Literal["input_text", "output_text", "text"]
    text: str
    annotations: list[Any] | None = None  # an output part fed back: ignored
    logprobs: list[Any] | None = None  # likewise

    @model_validator(mode="before")
    @classmethod
    def _text_only(cls, data: Any) -> Any:
        kind = data.get("type") if isinstance(data, dict) else None
        if kind in _MEDIA:
            raise ValueError(f"a {kind!r} content part is not supported: qwen-chat serves text")
        return data


class RefusalPart(Body):
    type: Literal["refusal"]
    refusal: str


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
    arguments: str  # a JSON object's text
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
    text: str


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
    kind = data.get("type", "message") if isinstance(data, dict) else getattr(data, "type", "message")
    return str(kind)


def _check_kind(data: Any) -> None:
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


class FunctionTool(Body):
    type: Literal["function"]
    name: str = Field(pattern=r"^[A-Za-z0-9_.-]{1,64}$")
    description: str | None = None
    parameters: dict[str, Any] | None = None
    strict: bool | None = None

    @model_validator(mode="before")
    @classmethod
    def _function_only(cls, data: Any) -> Any:
        kind = data.get("type") if isinstance(data, dict) else None
        if kind != "function":
            raise ValueError(
                f"the built-in tool {kind!r} is not served: qwen-chat runs function tools only "
                "(type: function), which your code executes"
            )
        return data

    def chat_tool(self) -> Tool:
        definition = FunctionDefinition(
            name=self.name, description=self.description, parameters=self.parameters, strict=self.strict
        )
        return Tool(type="function", function=definition)


class FunctionChoice(Body):
    type: Literal["function"]
    name: str


class TextFormat(Body):
    type: Literal["text", "json_object", "json_schema"]
    name: str | None = Field(default=None, max_length=64)
    schema_: dict[str, Any] | None = Field(default=None, alias="schema")
    description: str | None = None
    strict: bool | None = None

    @model_validator(mode="after")
    def _schema_given(self) -> TextFormat:
        if self.type == "json_schema" and self.schema_ is None:
            raise ValueError("format type json_schema needs a schema")
        return self

    def response_format(self) -> ResponseFormat:
        if self.type != "json_schema":
            return ResponseFormat(type=self.type)
        schema = JsonSchema(name=self.name or "response", schema=self.schema_ or {}, strict=self.strict)
        return ResponseFormat(type="json_schema", json_schema=schema)


class TextOptions(Body):
    format: TextFormat | None = None
    verbosity: Literal["medium"] | None = None  # the one level a model without the setting has


class Reasoning(Body):
    # Qwen's thinking has no levels: `none` and `minimal` turn it off, the others leave it on (as Qwen's
    # `enable_thinking`). No summaries are written: a reasoning item carries the thinking whole, as
    # `content` (vLLM's choice), whatever `summary` asks.
    effort: Literal["none", "minimal", "low", "medium", "high", "xhigh"] | None = None
    summary: Literal["auto", "concise", "detailed"] | None = None
    generate_summary: Literal["auto", "concise", "detailed"] | None = None


class ResponsesRequest(Body):
    model: str | None = None  # the served model when left out
    input: list[InputItem] = Field(min_length=1)  # a string is one user message
    instructions: Text | None = None
    max_output_tokens: MaxNewTokens | None = None
    temperature: Temperature | None = None
    top_p: TopP | None = None
    top_k: TopK | None = None  # vLLM's extension
    min_p: MinP | None = None  # vLLM's extension
    repetition_penalty: RepetitionPenalty | None = None  # vLLM's extension
    tools: list[FunctionTool] | None = Field(default=None, max_length=128)
    tool_choice: Literal["none", "auto", "required"] | FunctionChoice | None = None
    parallel_tool_calls: bool | None = None
    text: TextOptions | None = None
    reasoning: Reasoning | None = None
    stream: bool = False
    store: bool | None = None  # stateless: `store: true` is refused
    previous_response_id: str | None = None  # likewise, when given
    include: list[Literal["reasoning.encrypted_content"]] | None = None  # nothing is encrypted: see Reasoning
    metadata: dict[str, str] | None = None  # ignored, as nothing is stored
    user: str | None = None  # ignored: the key says who the user is
    safety_identifier: str | None = None  # ignored
    prompt_cache_key: str | None = None  # ignored: prefixes are kept without a key
    truncation: Literal["auto"] | None = None  # old turns are dropped to fit, as `auto` does

    @field_validator("store")
    @classmethod
    def _not_stored(cls, value: bool | None) -> bool | None:
        if value:
            raise ValueError(
                "store: true is not supported: qwen-chat stores no responses (send store: false, and the "
                "conversation's items as input)"
            )
        return value

    @field_validator("previous_response_id")
    @classmethod
    def _no_previous(cls, value: str | None) -> str | None:
        if value is not None:
            raise ValueError(
                "previous_response_id is not supported: qwen-chat stores no responses (send the "
                "conversation's items as input)"
            )
        return value

    @field_validator("input", mode="before")
    @classmethod
    def _served_items(cls, value: Any) -> Any:
        if isinstance(value, str):
            return [{"role": "user", "content": value}]
        for item in value if isinstance(value, list) else []:
            _check_kind(item)
        return value

    @field_validator("input")
    @classmethod
    def _a_turn(cls, value: list[Any]) -> list[Any]:
        if all(isinstance(item, ReasoningItem) for item in value):
            raise ValueError("the input has no message, function call or output to answer")
        return value

    @model_validator(mode="after")
    def _consistent(self) -> ResponsesRequest:
        if self.tool_choice not in (None, "none") and not self.tools:
            raise ValueError("tool_choice needs tools")
        names = {tool.name for tool in self.tools or []}
        if isinstance(self.tool_choice, FunctionChoice) and self.tool_choice.name not in names:
            raise ValueError(f"tool_choice names {self.tool_choice.name!r}, which is not in tools")
        return self

    def overrides(self) -> SamplingOverrides:
        return SamplingOverrides(
            max_new_tokens=self.max_output_tokens,
            temperature=self.temperature,
            top_p=self.top_p,
            top_k=self.top_k,
            min_p=self.min_p,
            repetition_penalty=self.repetition_penalty,
        )

    def chat_tools(self) -> list[Tool] | None:
        return [tool.chat_tool() for tool in self.tools] if self.tools is not None else None

    def chat_tool_choice(self) -> ToolChoice | None:
        if isinstance(self.tool_choice, FunctionChoice):
            return NamedToolChoice(type="function", function=NamedFunction(name=self.tool_choice.name))
        return self.tool_choice

    def response_format(self) -> ResponseFormat | None:
        if self.text is None or self.text.format is None:
            return None
        return self.text.format.response_format()

    def template_args(self) -> dict[str, object] | None:
        effort = self.reasoning.effort if self.reasoning is not None else None
        return {"enable_thinking": False} if effort in ("none", "minimal") else None

    def messages(self) -> list[Message]:
        """The conversation as the chat template reads it: `instructions` as the system turn, items in order
        (a function call joins the assistant turn before it, its output is a tool turn, a reasoning item's
        thinking goes to the assistant turn after it)."""
        messages: list[Message] = []
        thinking: str | None = None
        for item in self.input:
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
        if self.instructions is not None:  # first, and one system turn: Qwen's templates take only one
            if messages and messages[0]["role"] == "system":
                messages[0] = {**messages[0], "content": f"{self.instructions}\n\n{messages[0]['content']}"}
            else:
                messages.insert(0, {"role": "system", "content": self.instructions})
        return messages
