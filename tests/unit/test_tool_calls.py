"""Qwen's `<tool_call>` blocks become tool calls wherever the deltas split them; text around them, and
anything that only looked like a call, reaches the client unchanged."""

from __future__ import annotations

import json

import pytest

from qwen_chat.chat.tool_calls import ToolCall, ToolCallParser

CALL = '<tool_call>\n{"name": "get_weather", "arguments": {"city": "Paris"}}\n</tool_call>'


def run(deltas: list[str], **options: bool) -> tuple[str, list[tuple[str, dict[str, object]]], list[str]]:
    """The text, the calls (name, arguments) and every text piece as handed out."""
    parser = ToolCallParser(**options)
    pieces = [piece for delta in deltas for piece in parser.feed(delta)] + parser.flush()
    texts = [piece for piece in pieces if isinstance(piece, str)]
    calls = [(p.name, json.loads(p.arguments)) for p in pieces if isinstance(p, ToolCall)]
    return "".join(texts), calls, texts


def every_split(text: str) -> list[list[str]]:
    return [[text[:i], text[i:]] for i in range(1, len(text))]


@pytest.mark.parametrize("deltas", every_split("Let me check.\n\n" + CALL))
def test_a_call_split_anywhere_is_one_call_and_the_text_before_it(deltas: list[str]) -> None:
    text, calls, pieces = run(deltas)
    assert calls == [("get_weather", {"city": "Paris"})]
    assert text == "Let me check."
    assert not any("<" in piece for piece in pieces)  # no part of a marker ever leaked out


def test_two_calls_in_one_reply_and_one_when_parallel_calls_are_off() -> None:
    reply = [CALL + "\n" + CALL.replace("Paris", "Rome")]
    assert [c[1]["city"] for c in run(reply)[1]] == ["Paris", "Rome"]
    assert [c[1]["city"] for c in run(reply, parallel=False)[1]] == ["Paris"]


@pytest.mark.parametrize(
    ("deltas", "expected"),
    [
        (["a < b and <tool", "s> are tags"], "a < b and <tools> are tags"),  # held back, then released
        (['cut off <tool_call>\n{"name": "f"'], 'cut off <tool_call>\n{"name": "f"'),  # no end tag
        (["<tool_call>not json</tool_call> ok"], "<tool_call>not json</tool_call> ok"),  # not a call
        (["trailing space  \n"], "trailing space  \n"),  # no call: the text exactly
    ],
)
def test_text_that_only_looks_like_a_call_is_given_back(deltas: list[str], expected: str) -> None:
    text, calls, _ = run(deltas)
    assert (text, calls) == (expected, [])


def test_arguments_sent_as_a_json_string_are_read_as_the_object() -> None:
    reply = '<tool_call>{"name": "f", "arguments": "{\\"x\\": 1}"}</tool_call>'
    assert run([reply])[1] == [("f", {"x": 1})]


def test_a_whole_json_reply_is_one_call_or_a_list_of_them() -> None:
    one = json.dumps({"name": "f", "arguments": {"x": 1}})
    assert run([one[:5], one[5:]], whole_json=True)[1] == [("f", {"x": 1})]
    many = json.dumps([{"name": "f", "arguments": {}}, {"name": "g", "arguments": {"y": "z"}}])
    assert run([many], whole_json=True)[1] == [("f", {}), ("g", {"y": "z"})]
    assert run(['{"name": "f", "argu'], whole_json=True) == (
        '{"name": "f", "argu',
        [],
        ['{"name": "f", "argu'],
    )


def test_each_call_has_its_own_openai_id() -> None:
    parser = ToolCallParser()
    calls = [p for p in parser.feed(CALL + CALL) + parser.flush() if isinstance(p, ToolCall)]
    assert len({call.id for call in calls}) == 2
    assert calls[0].openai()["type"] == "function"


# Qwen3.5's XML format (vLLM's qwen3_coder): values typed by the tool's schema.
SCHEMA = {
    "type": "object",
    "properties": {
        "city": {"type": "string"},
        "zip": {"type": "string"},
        "days": {"type": "integer"},
        "ratio": {"type": "number"},
        "metric": {"type": "boolean"},
        "where": {"type": "object"},
        "hours": {"type": "array"},
    },
}
TOOLS: list[dict[str, object]] = [
    {"type": "function", "function": {"name": "get_weather", "parameters": SCHEMA}}
]


def xml_call(name: str = "get_weather", **values: str) -> str:
    parameters = "".join(f"<parameter={key}>\n{value}\n</parameter>\n" for key, value in values.items())
    return f"<tool_call>\n<function={name}>\n{parameters}</function>\n</tool_call>"


def run_xml(deltas: list[str], **options: bool) -> tuple[str, list[tuple[str, dict[str, object]]], list[str]]:
    parser = ToolCallParser(tools=TOOLS, **options)  # type: ignore[arg-type]
    pieces = [piece for delta in deltas for piece in parser.feed(delta)] + parser.flush()
    texts = [piece for piece in pieces if isinstance(piece, str)]
    calls = [(p.name, json.loads(p.arguments)) for p in pieces if isinstance(p, ToolCall)]
    return "".join(texts), calls, texts


XML_REPLY = (
    "Let me check.\n\n"
    + xml_call(city="Paris", days="3")
    + "\n"
    + xml_call(city="New York\nCity", zip="02134", ratio="0.5", metric="true")
    + "\n"
    + xml_call(where='{"lat": 1.5, "tags": ["a"]}', hours="[9, 12]")
)
XML_CALLS = [
    ("get_weather", {"city": "Paris", "days": 3}),
    ("get_weather", {"city": "New York\nCity", "zip": "02134", "ratio": 0.5, "metric": True}),
    ("get_weather", {"where": {"lat": 1.5, "tags": ["a"]}, "hours": [9, 12]}),
]


def test_xml_calls_split_at_every_position_read_as_the_whole_reply() -> None:
    whole = run_xml([XML_REPLY])
    assert whole[:2] == ("Let me check.", XML_CALLS)  # typed by the schema; "02134" stays a string
    for i in range(1, len(XML_REPLY)):
        text, calls, pieces = run_xml([XML_REPLY[:i], XML_REPLY[i:]])
        assert (text, calls) == whole[:2], i
        assert not any("<" in piece for piece in pieces), i
    assert run_xml(list(XML_REPLY))[:2] == whole[:2]  # one character a delta


def test_xml_values_that_do_not_parse_and_unlisted_tools_keep_their_text() -> None:
    odd = xml_call(days="soon", other="7") + xml_call("lookup", q="42")
    assert run_xml([odd])[1] == [("get_weather", {"days": "soon", "other": "7"}), ("lookup", {"q": "42"})]
    assert run_xml([xml_call()])[1] == [("get_weather", {})]


def test_an_xml_value_keeps_its_own_whitespace_only_the_formats_newlines_go() -> None:
    """A file's contents for a code-editing tool: its indentation and last newline are the value's."""
    code = "    indented()\n"
    call = xml_call("write", content=code, blank="")
    assert run_xml([call])[1] == [("write", {"content": code, "blank": ""})]


def test_a_value_no_parser_can_read_or_a_client_schema_it_cannot_use_give_the_block_back() -> None:
    deep = xml_call(hours="[" * 100_000)
    assert run_xml([deep])[:2] == (deep, [])
    odd = [{"type": "function", "function": {"name": "f", "parameters": {"properties": {"x": {"anyOf": 5}}}}}]
    block = xml_call("f", x="1")
    parser = ToolCallParser(tools=odd)
    assert parser.feed(block) + parser.flush() == [block]
    hermes = ToolCallParser()
    nested = "<tool_call>" + '{"name": "f", "arguments": ' + "[" * 100_000 + "</tool_call>"
    assert "".join(str(p) for p in hermes.feed(nested) + hermes.flush()) == nested


@pytest.mark.parametrize(
    "reply",
    [
        "<tool_call>\n<function=f>\n<parameter=a>\n1\n</parameter>\n</tool_call>",  # no </function>
        "<tool_call>\n<function=f>\nstray\n</function>\n</tool_call>",  # text between the tags
        "<tool_call>\n<function=f>\n<parameter=a>\n1\n</function>\n</tool_call>",  # unclosed parameter
        "<tool_call>\n<function=>\n</function>\n</tool_call>",  # no name
        "Sure: <tool_call>\n<function=f>\n<parameter=a>\n1\n</para",  # cut off
    ],
)
def test_malformed_or_cut_off_xml_blocks_come_back_as_text(reply: str) -> None:
    for deltas in [[reply], *every_split(reply)]:
        assert run_xml(deltas)[:2] == (reply, [])


def test_only_the_first_xml_call_when_parallel_calls_are_off() -> None:
    assert run_xml([XML_REPLY], parallel=False)[1] == XML_CALLS[:1]


def test_a_forced_reply_in_the_xml_format_is_read_as_blocks() -> None:
    reply = xml_call(city="Rome") + "\n" + xml_call(days="2")
    expected = [("get_weather", {"city": "Rome"}), ("get_weather", {"days": 2})]
    for deltas in [[reply], *every_split(reply)]:
        assert run_xml(deltas, whole_json=True)[:2] == ("", expected)
