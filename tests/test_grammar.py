"""Structured outputs: random sampling under the grammar mask yields valid JSON; check() refuses bad formats."""

from __future__ import annotations

import json
from typing import Any

import pytest
import torch

from qwen_chat.engine.core.grammar import GrammarError, Grammars, allocate_bitmask, apply_bitmask, check
from qwen_chat.engine.tiny.parts import build_tokenizer
from tests.support.schemas import BOUNDED

SCHEMA = BOUNDED
SCHEMA_FORMAT = {"type": "json_schema", "json_schema": {"name": "reply", "schema": SCHEMA, "strict": True}}
ROWS = 8


@pytest.fixture(scope="module")
def tokenizer() -> Any:
    return build_tokenizer(seed=0)


@pytest.fixture(scope="module")
def grammars(tokenizer: Any) -> Grammars:
    return Grammars(tokenizer, len(tokenizer) + 8, tokenizer.eos_token_id)


def sample(tokenizer: Any, grammars: Grammars, response_format: dict[str, Any], cap: int) -> list[list[int]]:
    """ROWS replies drawn from random logits under the mask, each until its matcher is done (or `cap`)."""
    vocab, eos = len(tokenizer) + 8, tokenizer.eos_token_id
    generator = torch.Generator().manual_seed(0)
    matchers = [grammars.matcher(response_format) for _ in range(ROWS)]
    replies: list[list[int]] = [[] for _ in range(ROWS)]
    bitmask = allocate_bitmask(ROWS, vocab)
    for _ in range(cap):
        live = [row for row in range(ROWS) if not matchers[row].done]
        if not live:
            break
        for row in live:
            matchers[row].fill(bitmask, row)
        logits = torch.randn(ROWS, vocab, generator=generator) * 3
        apply_bitmask(logits, bitmask)
        allowed = logits > float("-inf")
        assert not allowed[live, len(tokenizer) :].any(), "a padding row was allowed"
        tokens = logits.argmax(dim=1).tolist()
        for row in live:
            assert allowed[row].any()
            if tokens[row] == eos:
                assert allowed[row].sum() == 1, "eos is allowed only alone, after a complete value"
            matchers[row].accept(tokens[row])
            replies[row].append(tokens[row])
    for row in range(ROWS):
        if matchers[row].done:  # eos is allowed now, alone, and a second eos is tolerated
            matchers[row].fill(bitmask, row)
            logits = torch.zeros(ROWS, vocab)
            apply_bitmask(logits, bitmask)
            assert (logits[row] > float("-inf")).nonzero().flatten().tolist() == [eos]
            matchers[row].accept(eos)
            matchers[row].accept(eos)
            assert matchers[row].done
    return [reply for reply, matcher in zip(replies, matchers, strict=True) if matcher.done]


def test_schema_replies_are_valid_and_short(tokenizer: Any, grammars: Grammars) -> None:
    replies = sample(tokenizer, grammars, SCHEMA_FORMAT, cap=64)
    assert len(replies) == ROWS, "every reply to the bounded schema finishes within 64 tokens"
    specials = set(tokenizer.all_special_ids) | {1}
    for tokens in replies:
        assert not specials & set(tokens)
        value = json.loads(tokenizer.decode(tokens))
        assert set(value) == {"answer", "count", "tag"}
        assert value["answer"] in ("yes", "no")
        assert type(value["count"]) is int and 0 <= value["count"] <= 99
        assert isinstance(value["tag"], str) and len(value["tag"]) <= 8


def test_json_object_replies_parse(tokenizer: Any, grammars: Grammars) -> None:
    replies = sample(tokenizer, grammars, {"type": "json_object"}, cap=200)
    assert replies, "some json_object reply finishes within 200 tokens"
    for tokens in replies:
        assert isinstance(json.loads(tokenizer.decode(tokens)), dict)


def test_compiled_grammars_are_cached(grammars: Grammars) -> None:
    grammars.matcher({"type": "json_object"})
    cached = len(grammars._grammars)
    grammars.matcher({"type": "json_object"})
    grammars.matcher(json.loads(json.dumps(SCHEMA_FORMAT, sort_keys=True)))  # the same, keys reordered
    assert len(grammars._grammars) == cached


def test_apply_bitmask_masks_exactly_the_cleared_bits() -> None:
    vocab = 70
    bitmask = allocate_bitmask(2, vocab)
    bitmask[0] = 0
    bitmask[0, 0] = -(1 << 31) | 1  # tokens 0 and 31
    bitmask[0, 2] = 1 << 5  # token 69
    logits = torch.randn(2, vocab, dtype=torch.bfloat16)
    expected = logits.clone()
    apply_bitmask(logits, bitmask)
    assert (logits[0] > float("-inf")).nonzero().flatten().tolist() == [0, 31, 69]
    assert torch.equal(logits[0, [0, 31, 69]], expected[0, [0, 31, 69]])
    assert torch.equal(logits[1], expected[1])


@pytest.mark.parametrize(
    "response_format",
    [
        {"type": "json_schema"},
        {"type": "json_schema", "json_schema": {"name": "x"}},
        {"type": "json_schema", "json_schema": {"name": "x", "schema": "{}"}},
        {"type": "json_schema", "json_schema": {"name": "x", "schema": {}, "strict": "yes"}},
        {"type": "regex"},
        {
            "type": "json_schema",
            "json_schema": {
                "name": "x",
                "schema": {"type": "object", "properties": {"a": {"$ref": "#/nope"}}},
            },
        },
        {
            "type": "json_schema",
            "json_schema": {"name": "x", "schema": {"type": "integer", "minimum": 5, "maximum": 1}},
        },
    ],
)
def test_check_refuses(response_format: dict[str, Any]) -> None:
    with pytest.raises(GrammarError) as raised:
        check(response_format)
    assert str(raised.value) and "/project/" not in str(raised.value)


@pytest.mark.parametrize("response_format", [{"type": "text"}, {"type": "json_object"}, SCHEMA_FORMAT])
def test_check_passes(response_format: dict[str, Any]) -> None:
    check(response_format)


def test_matcher_refuses_what_check_refuses(grammars: Grammars) -> None:
    with pytest.raises(GrammarError, match="nope"):
        grammars.matcher(
            {
                "type": "json_schema",
                "json_schema": {"name": "x", "schema": {"properties": {"a": {"$ref": "#/nope"}}}},
            }
        )
    with pytest.raises(GrammarError):
        grammars.matcher({"type": "text"})
