"""A `response_format` as a grammar, checked where the request arrives: without a tokenizer and without
torch, so an API worker answers a schema the library cannot compile with a 400 before anything queues.

OpenAI's shapes: `{"type": "json_object"}` (any JSON object) and `{"type": "json_schema", "json_schema":
{"schema": {...}}}`. The grammar is llguidance's (engine/core/grammar.py says why), compact JSON: `", "` and
`": "` between items, no other whitespace, so a reply never wanders off into blank space.
"""

from __future__ import annotations

import functools
import json
from typing import Any

from llguidance import LLMatcher

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


def grammar(spec: dict[str, Any]) -> str:
    """llguidance's grammar for the response_format; raises GrammarError."""
    try:
        return str(LLMatcher.grammar_from_json_schema(schema_of(spec), defaults=JSON_OPTIONS))  # type: ignore[arg-type]
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
    try:
        text = grammar(json.loads(spec))
    except GrammarError as exc:
        return str(exc)
    error = LLMatcher.validate_grammar(text)
    return error.splitlines()[0][:500] if error else ""
