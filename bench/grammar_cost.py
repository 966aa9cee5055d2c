"""What grammar-constrained decoding costs per decode step: llguidance against xgrammar.

For the tiny model's tokenizer and the same tokenizer padded to Qwen's 151,936 rows (as
bench/shaped_model.py pads it), each library's one-off costs (tokenizer info, compiling the
json_object grammar and a small json_schema, making a matcher) and the cost of one decode step at
ROWS rows: fill the next-token bitmask of every row's matcher, apply it to a [ROWS, vocab] float32
logits tensor, accept each row's token. Two walks: "forced", every row force-fed a different
compact JSON object (tokenized by the tokenizer) under the json_object grammar; "sampled", every row
under the small schema sampling a random allowed token from random logits (a finished row starts a
new reply), so every step has ROWS live rows. "fill" is the per-row loop; "fill_par" the library's
batch call (threads); "apply" the library's own kernel; "lut" grammar.apply_bitmask (plain torch).
The last library, grammar.py, is this project's module (llguidance underneath, its tokenizer built from
token bytes, the batch fill `fill_masks`) as the sampler calls it. xgrammar is not a dependency: install
it to compare (`pip install xgrammar apache-tvm-ffi --no-deps`); without it its rows are skipped.

    .venv/bin/python -m bench.grammar_cost [--rows 16] [--steps 64] [--quick]
"""

from __future__ import annotations

import argparse
import importlib.util
import json
import random
import time
from collections.abc import Callable
from typing import Any

import torch

from qwen_chat.engine.tiny.parts import build_tokenizer

QWEN_VOCAB = 151936
SCHEMA = {
    "type": "object",
    "properties": {
        "answer": {"enum": ["yes", "no"]},
        "count": {"type": "integer", "minimum": 0, "maximum": 99},
        "tag": {"type": "string", "maxLength": 8},
    },
    "required": ["answer", "count", "tag"],
    "additionalProperties": False,
}
WORDS = [
    "the",
    "model",
    "chat",
    "token",
    "reply",
    "pod",
    "secret",
    "socket",
    "batch",
    "cache",
    "你好",
    "😀",
    "café",
]


def replies(rows: int, seed: int = 0) -> list[str]:
    """A different compact JSON object per row: nested objects, arrays, strings, numbers, literals."""
    rng = random.Random(seed)

    def words() -> str:
        return " ".join(rng.choice(WORDS) for _ in range(rng.randint(2, 6)))

    return [
        json.dumps(
            {
                "answer": words(),
                "items": [
                    {"id": rng.randint(0, 999), "name": words(), "ok": rng.random() < 0.5}
                    for _ in range(rng.randint(2, 4))
                ],
                "score": round(rng.random(), 3),
                "note": None,
            },
            ensure_ascii=False,
            separators=(",", ":"),
        )
        for _ in range(rows)
    ]


def timed(fn: Callable[..., Any], *args: Any) -> tuple[Any, float]:
    start = time.perf_counter()
    result = fn(*args)
    return result, time.perf_counter() - start


class LLGuidance:
    name = "llguidance"

    def __init__(self, tokenizer: Any, vocab: int) -> None:
        import llguidance
        import llguidance.hf
        import llguidance.torch as lt

        self.lt, self.LLMatcher = lt, llguidance.LLMatcher
        self.info = llguidance.hf.from_tokenizer(tokenizer, n_vocab=vocab, eos_token=tokenizer.eos_token_id)
        self.executor = llguidance.LLExecutor()

    def compile(self, schema: dict[str, Any]) -> str:
        grammar = self.LLMatcher.grammar_from_json_schema(schema, defaults={"whitespace_flexible": False})
        error = self.LLMatcher.validate_grammar(grammar, self.info)
        assert not error, error
        return grammar

    def matcher(self, compiled: str) -> Any:
        return self.LLMatcher(self.info, compiled, log_level=0)

    def fill(self, matchers: list[Any], bitmask: torch.Tensor) -> None:
        for row, matcher in enumerate(matchers):
            self.lt.fill_next_token_bitmask(matcher, bitmask, row)

    def fill_par(self, matchers: list[Any], bitmask: torch.Tensor) -> None:
        self.lt.fill_next_token_bitmask_par(
            self.executor, list(zip(matchers, range(len(matchers)), strict=True)), bitmask
        )

    def accept(self, matcher: Any, token: int) -> None:
        assert matcher.consume_token(token), matcher.get_error()

    def done(self, matcher: Any) -> bool:
        return bool(matcher.is_stopped())

    def apply(self, logits: torch.Tensor, bitmask: torch.Tensor) -> None:
        self.lt.apply_token_bitmask_inplace(logits, bitmask)  # torch.compile: compiles on the first call


class XGrammar:
    name = "xgrammar"

    def __init__(self, tokenizer: Any, vocab: int) -> None:
        import xgrammar

        self.xgr = xgrammar
        self.info = xgrammar.TokenizerInfo.from_huggingface(
            tokenizer, vocab_size=vocab, stop_token_ids=[tokenizer.eos_token_id]
        )
        self.compiler = xgrammar.GrammarCompiler(self.info, cache_enabled=False)
        self.batch = xgrammar.BatchGrammarMatcher()

    def compile(self, schema: dict[str, Any]) -> Any:
        return self.compiler.compile_json_schema(
            schema, any_whitespace=False, separators=(",", ":"), strict_mode=False
        )

    def matcher(self, compiled: Any) -> Any:
        return self.xgr.GrammarMatcher(compiled)

    def fill(self, matchers: list[Any], bitmask: torch.Tensor) -> None:
        for row, matcher in enumerate(matchers):
            matcher.fill_next_token_bitmask(bitmask, row)

    def fill_par(self, matchers: list[Any], bitmask: torch.Tensor) -> None:
        self.batch.batch_fill_next_token_bitmask(matchers, bitmask)

    def accept(self, matcher: Any, token: int) -> None:
        assert matcher.accept_token(token)

    def done(self, matcher: Any) -> bool:
        return bool(matcher.is_completed() or matcher.is_terminated())

    def apply(self, logits: torch.Tensor, bitmask: torch.Tensor) -> None:
        self.xgr.apply_token_bitmask_inplace(logits, bitmask)  # its C++ kernel on CPU


class Module:
    """This project's qwen_chat.engine.core.grammar as the sampler uses it."""

    name = "grammar.py"

    def __init__(self, tokenizer: Any, vocab: int) -> None:
        from qwen_chat.engine import grammar

        self.grammar = grammar
        self.grammars = grammar.Grammars(tokenizer, vocab, tokenizer.eos_token_id)
        warm = {"type": "json_schema", "json_schema": {"name": "warm", "schema": {"type": "boolean"}}}
        self.grammars.matcher(warm)  # builds the tokenizer info, lazily

    def compile(self, schema: dict[str, Any]) -> dict[str, Any]:
        response_format: dict[str, Any] = {"type": "json_object"}
        if schema != {"type": "object"}:
            response_format = {"type": "json_schema", "json_schema": {"name": "bench", "schema": schema}}
        self.grammars.matcher(response_format)  # compiles and caches
        return response_format

    def matcher(self, compiled: dict[str, Any]) -> Any:
        return self.grammars.matcher(compiled)

    def fill(self, matchers: list[Any], bitmask: torch.Tensor) -> None:
        for row, matcher in enumerate(matchers):
            matcher.fill(bitmask, row)

    def fill_par(self, matchers: list[Any], bitmask: torch.Tensor) -> None:
        self.grammar.fill_masks(matchers, bitmask)  # what the batch sampler calls

    def accept(self, matcher: Any, token: int) -> None:
        matcher.accept(token)

    def done(self, matcher: Any) -> bool:
        return bool(matcher.done)

    def apply(self, logits: torch.Tensor, bitmask: torch.Tensor) -> None:
        self.grammar.apply_bitmask(logits, bitmask)


def accept_all(lib: Any, matchers: list[Any], tokens: list[int]) -> None:
    for matcher, token in zip(matchers, tokens, strict=True):
        lib.accept(matcher, token)


def walk(
    lib: Any, compiled: Any, tokenizer: Any, vocab: int, rows: int, steps: int, forced: bool
) -> dict[str, float]:
    """Seconds per step of each part, over `steps` steps with all `rows` rows live."""
    from qwen_chat.engine.core.grammar import allocate_bitmask, apply_bitmask

    eos = tokenizer.eos_token_id
    plans = [[*tokenizer.encode(text), eos] for text in replies(rows)] if forced else []
    if forced:
        steps = min(steps, *(len(plan) - 1 for plan in plans))
    matchers = [lib.matcher(compiled) for _ in range(rows)]
    bitmask = allocate_bitmask(rows, vocab)
    generator = torch.Generator().manual_seed(0)
    logits = torch.empty(rows, vocab)
    totals = dict.fromkeys(["fill", "fill_par", "apply", "lut", "accept"], 0.0)
    for step in range(-2, steps):  # two warm-up steps
        times = {}
        _, times["fill_par"] = timed(lib.fill_par, matchers, bitmask)
        _, times["fill"] = timed(lib.fill, matchers, bitmask)
        torch.randn(rows, vocab, generator=generator, out=logits)
        other = logits.clone()
        _, times["apply"] = timed(lib.apply, other, bitmask)
        _, times["lut"] = timed(apply_bitmask, logits, bitmask)
        assert torch.equal(logits, other), "grammar.apply_bitmask differs from the library's kernel"
        if forced:
            chosen = [plan[step + 2] for plan in plans]
            assert all(logits[row, token] > float("-inf") for row, token in enumerate(chosen))
        else:
            chosen = logits.argmax(dim=1).tolist()  # random logits: a random allowed token
        _, times["accept"] = timed(accept_all, lib, matchers, chosen)
        if not forced:  # keep every row live: a finished reply makes way for a new one
            matchers = [lib.matcher(compiled) if lib.done(m) else m for m in matchers]
        if step >= 0:
            for part, seconds in times.items():
                totals[part] += seconds
    return {part: seconds / steps for part, seconds in totals.items()} | {"steps": steps}


def measure(lib_class: Any, tokenizer: Any, label: str, rows: int, steps: int) -> list[str]:
    vocab = len(tokenizer)
    lib, info_s = timed(lib_class, tokenizer, vocab)
    obj, obj_s = timed(lib.compile, {"type": "object"})
    schema, schema_s = timed(lib.compile, SCHEMA)
    _, matcher_s = timed(lib.matcher, schema)
    bitmask = torch.full(((vocab + 31) // 32,), -1, dtype=torch.int32).unsqueeze(0)
    first = lib.matcher(schema)
    _, first_s = timed(lib.fill, [first], bitmask)
    logits = torch.randn(2, vocab)
    _, apply_first_s = timed(lib.apply, logits, bitmask.expand(2, -1).contiguous())
    lines = [
        f"{lib.name:<10} {label:<7} vocab {vocab:>7}: tokenizer info {info_s * 1e3:7.1f} ms,"
        f" compile json_object {obj_s * 1e3:6.1f} ms, schema {schema_s * 1e3:6.1f} ms,"
        f" matcher {matcher_s * 1e6:6.0f} µs, first mask {first_s * 1e3:6.2f} ms,"
        f" first apply {apply_first_s * 1e3:7.1f} ms"
    ]
    for walk_name, compiled, forced in (("forced", obj, True), ("sampled", schema, False)):
        r = walk(lib, compiled, tokenizer, vocab, rows, steps, forced)
        step = r["fill"] + r["lut"] + r["accept"]
        lines.append(
            f"    {walk_name:<8} {int(r['steps']):>3} steps x {rows} rows, µs/step:"
            f" fill {r['fill'] * 1e6:7.0f}  fill_par {r['fill_par'] * 1e6:7.0f}"
            f"  apply {r['apply'] * 1e6:6.0f}  lut {r['lut'] * 1e6:6.0f}"
            f"  accept {r['accept'] * 1e6:5.0f}  | fill+lut+accept {step * 1e6:7.0f} µs/step,"
            f" {step * 1e6 / rows:6.0f} µs/row"
        )
    return lines


def main() -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--rows", type=int, default=16)
    parser.add_argument("--steps", type=int, default=64)
    parser.add_argument("--libs", default="llguidance,xgrammar,grammar.py")
    parser.add_argument(
        "--quick", action="store_true", help="skip llguidance on the padded vocabulary (~4 minutes of setup)"
    )
    args = parser.parse_args()
    torch.set_num_threads(max(1, torch.get_num_threads()))
    tiny = build_tokenizer(seed=0)
    padded = build_tokenizer(seed=0)
    padded.add_tokens([f"<w{i}>" for i in range(QWEN_VOCAB - len(padded))])
    libs = {"llguidance": LLGuidance, "xgrammar": XGrammar, "grammar.py": Module}
    print(f"torch threads {torch.get_num_threads()}; times are wall clock on this machine")
    for name in args.libs.split(","):
        if name == "xgrammar" and importlib.util.find_spec("xgrammar") is None:
            print("xgrammar: not installed, skipped")
            continue
        for label, tokenizer in (("tiny", tiny), ("padded", padded)):
            if args.quick and name == "llguidance" and label == "padded":
                continue
            print("\n".join(measure(libs[name], tokenizer, label, args.rows, args.steps)), flush=True)


if __name__ == "__main__":
    main()
