"""What a request asks of its reply beyond sampling, the same on /v1 and /ws: tools (OpenAI's `tools`,
`tool_choice`, `parallel_tool_calls`), a `response_format`, log-probabilities; and what they become
(`ReplyOptions`): the tools the chat template lists, the parser that reads the reply's calls, and the
grammar every token is masked to (engine/grammar_spec.py).

With `tool_choice` `auto` the model decides and its `<tool_call>` blocks are parsed (in either of Qwen's
formats, chat/tool_calls.py); with `required` or a named function a grammar makes the whole reply a call
(several with `parallel_tool_calls`), as vLLM does: the request asks for `{"type": "tool_calls"}` and the
engine writes it in its model's own format (Hermes JSON, or Qwen3.5's XML blocks: engine/grammar_spec.py).
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any, Literal

from pydantic import BaseModel, ConfigDict, Field, model_validator

from qwen_chat.chat.surrogates import refuse_non_text
from qwen_chat.chat.tool_calls import ToolCallParser
from qwen_chat.engine.grammar_spec import GrammarError, canonical, check
from qwen_chat.errors import ErrorCode, Refusal

_FORBID = ConfigDict(extra="forbid")


class FunctionDefinition(BaseModel):
    model_config = _FORBID
    name: str = Field(pattern=r"^[A-Za-z0-9_.-]{1,64}$")
    description: str | None = None
    parameters: dict[str, Any] | None = None
    strict: bool | None = None


class Tool(BaseModel):
    model_config = _FORBID
    type: Literal["function"]
    function: FunctionDefinition


class NamedFunction(BaseModel):
    model_config = _FORBID
    name: str


class NamedToolChoice(BaseModel):
    model_config = _FORBID
    type: Literal["function"]
    function: NamedFunction


class JsonSchema(BaseModel):
    model_config = _FORBID
    name: str = Field(default="response", max_length=64)
    description: str | None = None
    schema_: dict[str, Any] = Field(default_factory=dict, alias="schema")
    strict: bool | None = None


class ResponseFormat(BaseModel):
    model_config = _FORBID
    type: Literal["text", "json_object", "json_schema"]
    json_schema: JsonSchema | None = None

    @model_validator(mode="after")
    def _schema_given(self) -> ResponseFormat:
        if self.type == "json_schema" and self.json_schema is None:
            raise ValueError("type json_schema needs a json_schema object")
        return self

    def constraint(self) -> dict[str, Any] | None:
        """What the grammar is built from; None for plain text."""
        if self.type == "text":
            return None
        if self.type == "json_object":
            return {"type": "json_object"}
        assert self.json_schema is not None
        return {"type": "json_schema", "json_schema": {"schema": self.json_schema.schema_}}


ToolChoice = Literal["none", "auto", "required"] | NamedToolChoice


@dataclass(frozen=True)
class ReplyOptions:
    """What a request asks of its reply beyond sampling: tools for the template and the parser that reads
    its calls, a grammar (OpenAI's response_format as canonical JSON), log-probabilities."""

    tools: list[dict[str, Any]] | None = None
    tool_parser: ToolCallParser | None = None
    constraint: str | None = None
    top_logprobs: int | None = None


def _grammar(spec: dict[str, Any], field: str) -> str:
    refuse_non_text(spec, field, f"{field}: a string")
    try:
        check(spec)
    except GrammarError as exc:
        raise Refusal(ErrorCode.BAD_REQUEST, f"{field}: {exc}", param=field, status=400) from None
    return canonical(spec)


def reply_options(
    tools: list[Tool] | None,
    tool_choice: ToolChoice | None,
    parallel_tool_calls: bool | None,
    response_format: ResponseFormat | None,
    top_logprobs: int | None = None,
    format_field: str = "response_format",
) -> ReplyOptions:
    """The tools, parser, grammar and log-probabilities a request asks for; a grammar the library cannot
    build is refused (400) naming the field (`format_field`: the format's, as the client's API spells it)."""
    choice = tool_choice or ("auto" if tools else "none")
    parallel = parallel_tool_calls is not False
    constraint = None
    if response_format is not None and (spec := response_format.constraint()) is not None:
        if choice not in ("none", "auto"):
            message = f"{format_field} cannot be combined with a tool_choice that forces a call"
            raise Refusal(ErrorCode.BAD_REQUEST, message, param=format_field, status=400)
        constraint = _grammar(spec, format_field)
    if choice == "none" or not tools:
        return ReplyOptions(constraint=constraint, top_logprobs=top_logprobs)
    listed = [tool.model_dump(exclude_none=True) for tool in tools]
    if choice == "auto":
        return ReplyOptions(listed, ToolCallParser(parallel, tools=listed), constraint, top_logprobs)
    chosen = tools
    if isinstance(choice, NamedToolChoice):
        chosen = [tool for tool in tools if tool.function.name == choice.function.name]
        if not chosen:
            message = f"tool_choice names {choice.function.name!r}, which is not in tools"
            raise Refusal(ErrorCode.BAD_REQUEST, message, param="tool_choice", status=400)
    functions = [{"name": tool.function.name, "parameters": tool.function.parameters} for tool in chosen]
    several = parallel and not isinstance(choice, NamedToolChoice)
    grammar = _grammar({"type": "tool_calls", "functions": functions, "parallel": several}, "tools")
    parser = ToolCallParser(parallel, whole_json=True, tools=listed)
    return ReplyOptions(listed, parser, grammar, top_logprobs)
