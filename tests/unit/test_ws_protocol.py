"""Frames a /ws client sends: what parses, and how the rest is refused (code, message, echoed id)."""

from __future__ import annotations

import json

import pytest

from qwen_chat.errors import ErrorCode
from qwen_chat.ws.protocol import Cancel, ChatRequest, ProtocolError, Reset, done, parse_frame, start, token


def test_plain_text_is_a_chat_message_and_json_frames_parse() -> None:
    assert parse_frame("hello there") == ChatRequest(type="chat", content="hello there")
    assert parse_frame("[1, 2]") == ChatRequest(type="chat", content="[1, 2]")  # not an object: text
    chat = parse_frame(json.dumps({"type": "chat", "id": "7", "content": "hi", "params": {"seed": 3}}))
    assert isinstance(chat, ChatRequest) and chat.id == "7" and chat.params.seed == 3
    stateless = parse_frame(json.dumps({"type": "chat", "messages": [{"role": "user", "content": "q"}]}))
    assert isinstance(stateless, ChatRequest) and stateless.content is None
    assert parse_frame('{"type": "cancel", "id": "x"}') == Cancel(type="cancel", id="x")
    assert parse_frame('{"type": "reset"}') == Reset(type="reset")


@pytest.mark.parametrize(
    ("frame", "message", "echoed"),
    [
        ("   ", "the message is empty", None),
        ("{not json", "the frame is not valid JSON", None),
        ("{}", "Unable to extract tag using discriminator 'type'", None),
        ('{"type": "nope", "id": "0"}', "Input tag 'nope' found using 'type' does not match", "0"),
        (
            '{"type": "chat", "id": "1", "content": "x", "params": {"temperature": 3}}',
            "params.temperature: Input should be less than or equal to 2",
            "1",
        ),
        (
            '{"type": "chat", "id": "2", "content": "x", "params": {"top_p": 0}}',
            "params.top_p: Input should be greater than 0",
            "2",
        ),
        (
            '{"type": "chat", "id": "3", "content": "x", "params": {"temperature": "hot"}}',
            "params.temperature: Input should be a valid number",
            "3",
        ),
        (
            '{"type": "chat", "id": "4", "content": "x", "params": {"bogus": 1}}',
            "params.bogus: Extra inputs are not permitted",
            "4",
        ),
        ('{"type": "chat", "id": "5"}', "send one of 'content', 'messages' or 'tool_results'", "5"),
        ('{"type": "chat", "content": "  "}', "'content' is empty", None),
        (
            '{"type": "chat", "id": "6", "messages": [{"role": "assistant", "content": "x"}]}',
            "the last of 'messages' must have role 'user'",
            "6",
        ),
        (
            '{"type": "chat", "id": "7", "content": "\\ud800"}',
            "a string holds a lone surrogate escape (\\ud800-\\udfff): it is not text",
            "7",
        ),
        (
            '{"type": "chat", "id": "\\udfff", "content": "\\udfff"}',
            "a string holds a lone surrogate escape (\\ud800-\\udfff): it is not text",
            None,
        ),
        (
            '{"type": "cancel", "max_new_tokens": ' + "9" * 5000 + "}",
            "the frame holds a number too long to read",
            None,
        ),
        (
            '{"type": "chat", "id": "' + "x" * 129 + '", "content": "x"}',
            "id: String should have at most 128 characters",
            None,
        ),
    ],
)
def test_bad_frames_are_refused_with_bad_request_naming_the_field(
    frame: str, message: str, echoed: str | None
) -> None:
    with pytest.raises(ProtocolError) as refused:
        parse_frame(frame)
    assert refused.value.code is ErrorCode.BAD_REQUEST
    assert message in refused.value.message
    assert refused.value.message_id == echoed
    assert refused.value.ws_frame(refused.value.message_id)["code"] == "bad_request"


def test_server_frames_have_the_contract_shape() -> None:
    assert start("i", 2) == {"type": "start", "id": "i", "queue_position": 2}
    assert token("i", "Hi") == {"type": "token", "id": "i", "text": "Hi"}
    # The contract's usage, plus OpenAI's `prompt_tokens_details.cached_tokens`: the prompt tokens resumed
    # from the conversation's kept state (the hybrid core), not prefilled again.
    assert done("i", "length", 21, 64, 8.6049, 362.0012, 16) == {
        "type": "done",
        "id": "i",
        "finish_reason": "length",
        "usage": {
            "prompt_tokens": 21,
            "completion_tokens": 64,
            "prompt_tokens_details": {"cached_tokens": 16},
        },
        "timing": {"ttft_ms": 8.6, "tokens_per_second": 362.0},
    }
