"""A `response_format` as a grammar, checked where the request arrives: without a tokenizer and without
torch, so an API worker answers a schema the library cannot compile with a 400 before anything queues.

OpenAI's shapes: `{"type": "json_object"}` (any JSON object) and `{"type": "json_schema", "json_schema":
{"schema": {...}}}`. The grammar is llguidance's (engine/core/grammar.py says why), compact JSON: `", "` and
`": "` between items, no other whitespace, so a reply never wanders off into blank space.

A forced tool call (`tool_choice` `required` or a named function) is `{"type": "tool_calls", "functions":
[{"name", "parameters"}], "parallel": bool}`, made into the grammar of the model's own format where the
engine knows it (`grammar(spec, tool_format)`): for Hermes JSON a call object (a list of them when
parallel), as vLLM forces it; for Qwen3.5's XML (families.py) `<tool_call>` blocks as its template shows
them, in a Lark grammar. The API worker checks both.

The XML grammar: `<tool_call>\n<function=NAME>\n<parameter=KEY>\nVALUE\n</parameter>\n</function>\n
</tool_call>`, blocks one line apart when parallel. Parameters come in the schema's order, the required ones
always, the others optional, no unlisted ones (any, where the schema lists none). A value the schema types as
a string or leaves untyped (its own `type`, `anyOf`, `oneOf`; a bare `$ref` is not followed, as transformers'
parser does not) is free text without `</parameter>`, one of its `enum` where it has one; any other value is
JSON of its schema, as chat/xml_tool_calls.py reads it back.
"""

from __future__ import annotations

import functools
import json
from typing import Any, Literal

from llguidance import LLMatcher

ToolFormat = Literal["hermes", "xml"]  # how a model writes calls: engine/model/prompts.py `tool_format`

# Qwen's own tool-call and JSON examples write `{"name": "f", "arguments": {...}}`: the same separators.
JSON_OPTIONS: dict[str, Any] = {"whitespace_flexible": False, "item_separator": ", ", "key_separator": ": "}


class GrammarError(ValueError):
    """The response_format cannot be compiled; `str()` says why, for a 400."""


def canonical(spec: dict[str, Any]) -> str:
    """One text per response_format, so equal requests share a compiled grammar."""
    return json.dumps(spec, sort_keys=True, separators=(",", ":"), ensure_ascii=False)


def schema_of(spec: dict[str, Any]) -> dict[str, Any]:
    kind = spec.get("type")
    if kind == "json_object":
        return {"type": "object"}
    if kind == "json_schema":
        inner = spec.get("json_schema")
        schema = inner.get("schema") if isinstance(inner, dict) else None
        if not isinstance(schema, dict):
            raise GrammarError("json_schema.schema must be a JSON Schema object")
        if not isinstance(inner.get("strict", False), bool | None):  # type: ignore[union-attr]
            raise GrammarError("json_schema.strict must be a boolean")
        return schema
    raise GrammarError(f"response_format type {kind!r} is not supported (use json_object or json_schema)")


def grammar(spec: dict[str, Any], tool_format: ToolFormat = "hermes") -> str:
    """llguidance's grammar for the response_format, or for a forced call in `tool_format`; raises
    GrammarError."""
    try:
        if spec.get("type") == "tool_calls":
            functions, parallel = spec.get("functions") or [], bool(spec.get("parallel"))
            if tool_format == "xml":
                return xml_calls_grammar(functions, parallel, JSON_OPTIONS)
            schema = calls_schema(functions, parallel)
        else:
            schema = schema_of(spec)
        return str(LLMatcher.grammar_from_json_schema(schema, defaults=JSON_OPTIONS))  # type: ignore[arg-type]
    except ValueError as exc:
        raise GrammarError(str(exc)) from None


def check(spec: dict[str, Any]) -> None:
    """Raises GrammarError for a response_format that cannot become a grammar (plain text passes)."""
    if isinstance(spec, dict) and spec.get("type") == "text":
        return
    error = _error_of(canonical(spec))
    if error:
        raise GrammarError(error)


@functools.lru_cache(maxsize=256)
def _error_of(spec: str) -> str:
    """ "" for a grammar that compiles, else why not; remembered, as clients repeat their schemas."""
    parsed = json.loads(spec)
    formats: tuple[ToolFormat, ...] = ("hermes", "xml") if parsed.get("type") == "tool_calls" else ("hermes",)
    for tool_format in formats:  # the worker does not know the model's format: both must compile
        try:
            text = grammar(parsed, tool_format)
        except GrammarError as exc:
            return str(exc)
        error = LLMatcher.validate_grammar(text)
        if error:
            return error.splitlines()[0][:500]
    return ""


# Forced tool calls, in each format.


def _call_schema(function: dict[str, Any]) -> dict[str, Any]:
    return {
        "type": "object",
        "properties": {
            "name": {"const": function["name"]},
            "arguments": function.get("parameters") or {"type": "object"},
        },
        "required": ["name", "arguments"],
        "additionalProperties": False,
    }


def calls_schema(functions: list[dict[str, Any]], parallel: bool) -> dict[str, Any]:
    """The JSON schema of a forced Hermes reply: one call of `functions` (each `{"name", "parameters"}`), or
    a list of them."""
    call: dict[str, Any] = {"anyOf": [_call_schema(function) for function in functions]}
    return {"type": "array", "items": call, "minItems": 1} if parallel else call


def _literal(text: str) -> str:
    return json.dumps(text, ensure_ascii=False)


def _types(schema: dict[str, Any]) -> set[str]:
    declared = schema.get("type")
    types = {declared} if isinstance(declared, str) else set(declared if isinstance(declared, list) else [])
    for union in ("anyOf", "oneOf"):
        for choice in schema.get(union) or []:
            if isinstance(choice, dict):
                types |= _types(choice)
    return types


def _value(schema: Any, root: dict[str, Any], options: dict[str, Any]) -> str:
    """A parameter's value and the line that closes it."""
    close = _literal("\n</parameter>\n")
    schema = schema if isinstance(schema, dict) else {}
    enum = schema.get("enum")
    if isinstance(enum, list) and enum and all(isinstance(item, str) for item in enum):
        return "(" + " | ".join(_literal(item) for item in enum) + ") " + close
    types = _types(schema)
    if not types or "string" in types:
        return "VALUE"
    embedded = dict(schema)
    if "$ref" in json.dumps(schema):  # its references point into the parameters' own definitions
        embedded.update({key: root[key] for key in ("$defs", "definitions") if key in root})
    embedded["x-guidance"] = options
    return f"%json {json.dumps(embedded, ensure_ascii=False)} {close}"


def _call(index: int, function: dict[str, Any], options: dict[str, Any]) -> list[str]:
    """The rules of one function's call block."""
    parameters = function.get("parameters")
    parameters = parameters if isinstance(parameters, dict) else {}
    properties = parameters.get("properties")
    required = set(parameters.get("required") or [])
    opening = _literal(f"<tool_call>\n<function={function['name']}>\n")
    rules: list[str] = []
    if isinstance(properties, dict):
        names = []
        for position, (key, schema) in enumerate(properties.items()):
            name = f"p{index}_{position}"
            opening_line = _literal(f"<parameter={key}>\n")
            rules.append(f"{name}: {opening_line} {_value(schema, parameters, options)}")
            names.append(name if key in required else f"{name}?")
        body = " ".join(names)
    else:
        body = "any_parameter*"
    return [f"call{index}: {opening} {body} {_literal('</function>' + chr(10) + '</tool_call>')}", *rules]


def xml_calls_grammar(functions: list[dict[str, Any]], parallel: bool, options: dict[str, Any]) -> str:
    """The Lark grammar of a forced reply in Qwen3.5's XML format: one call block of `functions` (each
    `{"name", "parameters"}`), or several, one line apart; JSON values written with `options`."""
    calls = " | ".join(f"call{index}" for index in range(len(functions)))
    more = ' ("\\n" call)*' if parallel else ""
    lines = [f"start: call{more}", f"call: {calls}"]
    for index, function in enumerate(functions):
        lines += _call(index, function, options)
    lines += [
        'any_parameter: "<parameter=" KEY ">\\n" VALUE',
        "KEY: /[^>\\n]+/",
        'VALUE: TEXT "\\n</parameter>\\n"',
        "TEXT: /(.|\\n)*/ & ~/(.|\\n)*<\\/parameter>(.|\\n)*/",
    ]
    return "\n".join(lines) + "\n"
