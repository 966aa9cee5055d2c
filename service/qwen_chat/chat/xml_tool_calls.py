"""The body of a Qwen3.5-style tool call (vLLM's `qwen3_coder` format), as Qwen3.5, 3.6, 3.8 and Qwen3-Coder
write it inside `<tool_call>` ... `</tool_call>` (the framing is chat/tool_calls.py's):

    <function=get_weather>
    <parameter=city>
    Paris
    </parameter>
    <parameter=days>
    3
    </parameter>
    </function>

The structure is checked here (`<function=NAME>`, then zero or more `<parameter=KEY>...</parameter>`, then
`</function>`, only whitespace between), so that anything else is given back as the text it was. The values
are read by transformers' own response parser (`transformers.utils.chat_parsing`, configured as
`transformers serve` configures it for qwen3_5): typed by the tool's JSON schema (number, integer, boolean,
object, array, null parsed; a string, an unknown parameter or a value that does not parse kept as text),
one newline after `<parameter=KEY>` and one before `</parameter>` dropped, as vLLM's `qwen3_coder`
parser does (the rest of the whitespace is the value's: a file's indentation, its last newline).
"""

from __future__ import annotations

import json
import re
from typing import Any

_NAME = r"[^>\n]+"
_PARAMETER = rf"<parameter={_NAME}>(?:(?!</parameter>).)*</parameter>"
_BODY = re.compile(rf"\s*<function=({_NAME})>\s*(?:{_PARAMETER}\s*)*</function>\s*", re.DOTALL)
_ANCHOR = "<|im_start|>assistant\n"  # what transformers' parser starts from; given as the prefix
# transformers serve's qwen3_5 entry (cli/serving/utils.py), its `tool_calls` field alone.
_TEMPLATE: dict[str, Any] = {
    "start_anchor": _ANCHOR,
    "fields": {
        "tool_calls": {
            "open_pattern": r"\s*<tool_call>\s*<function=(?P<name>[^>\n]+)>",
            "close_pattern": r"</function>\s*</tool_call>",
            "repeats": True,
            "content": "xml-inline",
            "content_args": {
                # One newline after the opening tag and one before the closing tag are the format's (vLLM's
                # qwen3_coder strips those alone): a file's indentation or trailing newlines are the value's.
                "tag_pattern": r"<parameter=(?P<key>[^>\n]+)>\n?(?P<value>.*?)\n?</parameter>",
            },
            "transform": {"type": "function", "function": {"name": "{name}", "arguments": "{content}"}},
        }
    },
}


def is_xml_body(body: str) -> bool:
    """Whether a `<tool_call>` block's body is written in this format (it opens with `<function=`)."""
    return body.lstrip().startswith("<function=")


def read_xml_call(body: str, tools: list[Any] | None = None) -> tuple[str, str] | None:
    """A call's name and arguments (a JSON object's text) from a block's body, the arguments typed by
    `tools` (OpenAI's tool objects) when they list the function; None when the body is not one."""
    found = _BODY.fullmatch(body)
    if found is None or not found.group(1).strip():
        return None
    from transformers.utils.chat_parsing import parse_response  # here: transformers loads in 0.5 s

    block = f"<tool_call>{body}</tool_call>"
    try:
        message = parse_response(_ANCHOR + block, _TEMPLATE, prefix=_ANCHOR, tools=tools or None)
    except Exception:
        return None  # a client's odd schema, a value nested past the decoder's depth: given back as text
    calls = message.get("tool_calls") or []
    if len(calls) != 1:
        return None
    function = calls[0].get("function", {})
    arguments = function.get("arguments")
    if not isinstance(arguments, dict):
        return None
    return str(function.get("name", "")).strip(), json.dumps(arguments, ensure_ascii=False)
