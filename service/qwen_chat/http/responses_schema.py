"""The body `POST /v1/responses` accepts, as OpenAI's Responses API defines it (its `input` items are in
`responses_input.py`), and what it asks of the chat: sampling, tools, a format, thinking on or off.

The service is stateless: nothing is stored, so `store: true`, `previous_response_id` and item references
are refused by name. Function tools are served; a built-in tool (web search, file search, code interpreter
...) is refused by name. As on the other `/v1` bodies, anything not declared is a 400 naming the field.
"""

from __future__ import annotations

from typing import Any, Literal

from pydantic import Field, field_validator, model_validator

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
from qwen_chat.http.openai_schema import Body, Text
from qwen_chat.http.responses_input import InputItem, ReasoningItem, as_messages, check_kind
from qwen_chat.sampling_params import (
    MaxNewTokens,
    MinP,
    RepetitionPenalty,
    SamplingOverrides,
    Temperature,
    TopK,
    TopP,
)


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
    input: list[InputItem] = Field(min_length=1, max_length=4096)  # a string is one user message
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
            check_kind(item)
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
        """The conversation as the chat template reads it (`responses_input.as_messages`)."""
        return as_messages(self.input, self.instructions)
