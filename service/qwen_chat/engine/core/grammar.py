"""Structured outputs: OpenAI's `response_format` as a per-row token mask for the batch sampler.

The grammar library is llguidance (Microsoft's, vLLM's `guidance` backend). Measured against xgrammar with
`.venv/bin/python -m bench.grammar_cost` (2-core CPU, 16 rows, the tiny tokenizer padded to Qwen's
151,936 rows; µs per decode step for all 16 rows):

    library      fill 16 masks  accept 16   compile a schema
    xgrammar          42-70      110-150        20-35 ms
    llguidance      256-420      150-160         0.4 ms

xgrammar fills masks 4-6x faster (it precomputes token masks while compiling); both cost under half a
millisecond a step, and the batch sampler computes them on a thread of their own while the forward pass
runs (`fill_masks`, outside the GIL). llguidance is the one used, for three reasons the per-step figure
does not show: the same compiler checks a
schema in the API worker (`grammar_spec.py`), where xgrammar would import torch and transformers (2 s, 260
MB per worker), so a 400 and the engine never disagree; it follows JSON exactly, where xgrammar let raw
control bytes into length-bounded strings and treated `<|im_start|>` as text to be written inside them;
and it installs as one wheel with no dependencies (xgrammar requires triton).

Its tokenizer is built from the token bytes (byte-level BPE's alphabet undone) rather than from the
tokenizer's JSON, which llguidance parses in time quadratic in the added tokens (242 s for the shaped bench
models' 150k); special tokens are never allowed, and the only way out is `eos_token_id`, once the value is
complete. A forced tool call's grammar follows the model's own format, which its chat template shows
(`tool_format`, engine/model/prompts.py): the API worker asks for "a call", the core knows how its model
writes one. Neither library's apply kernel is used: `apply_bitmask` adds a 0/-inf bias gathered from a
byte table, branch-free on any device.
"""

from __future__ import annotations

import json
import threading
from collections import OrderedDict
from typing import TYPE_CHECKING, Any

from llguidance import LLExecutor, LLMatcher, LLTokenizer, TokenizerWrapper

from qwen_chat.engine.grammar_spec import GrammarError, ToolFormat, check, grammar
from qwen_chat.engine.model.prompts import tool_format as format_of

if TYPE_CHECKING:
    import torch

__all__ = ["GrammarError", "Grammars", "Matcher", "allocate_bitmask", "apply_bitmask", "check", "fill_masks"]
CACHED_GRAMMARS = 64  # grammars kept, least recently used dropped first


def _byte_decoder() -> dict[str, int]:
    """GPT-2's byte-level alphabet (Qwen's tokenizers use it), back to bytes."""
    printable = [
        *range(ord("!"), ord("~") + 1),
        *range(ord("¡"), ord("¬") + 1),
        *range(ord("®"), ord("ÿ") + 1),
    ]
    chars = list(printable)
    extra = 0
    for byte in range(256):
        if byte not in printable:
            printable.append(byte)
            chars.append(256 + extra)
            extra += 1
    return {chr(char): byte for byte, char in zip(printable, chars, strict=True)}


class _TokenBytes:
    """What llguidance's `TokenizerWrapper` reads: each id's bytes, the special ids, an encoder."""

    def __init__(self, tokenizer: Any, vocab_size: int, eos_token_id: int) -> None:
        decoder = _byte_decoder()
        added = {
            index: token for index, token in tokenizer.added_tokens_decoder.items() if index < vocab_size
        }
        tokens: list[bytes] = [b""] * vocab_size  # ids past the tokenizer: no bytes, never allowed
        for text, index in tokenizer.get_vocab().items():
            if index >= vocab_size:
                continue
            if index in added or any(char not in decoder for char in text):
                tokens[index] = text.encode("utf-8")
            else:
                tokens[index] = bytes(decoder[char] for char in text)
        self.tokens = tokens
        self.special_token_ids = [index for index, token in added.items() if token.special]
        self.eos_token_id = eos_token_id
        self.bos_token_id = None
        self._tokenizer = tokenizer

    def __call__(self, text: bytes | str) -> list[int]:
        if isinstance(text, bytes):
            text = text.decode("utf-8", errors="replace")
        return list(self._tokenizer(text, add_special_tokens=False)["input_ids"])


class Matcher:
    """One reply's position in its grammar."""

    def __init__(self, matcher: LLMatcher, eos_token_id: int) -> None:
        self._matcher = matcher
        self._eos = eos_token_id
        self.ended = False  # a refused token: the reply ends

    def accept(self, token_id: int) -> None:
        """Advance by one sampled token; the eos token after the end is a no-op. A token the grammar
        refuses (it cannot come from a masked row) ends the reply: only eos is allowed after it."""
        if self.ended or (self._matcher.is_stopped() and token_id == self._eos):
            return
        if not self._matcher.consume_token(token_id):
            self.ended = True

    def fill(self, bitmask: torch.Tensor, row: int) -> None:
        """Write the tokens allowed next into row `row` of a bitmask from `allocate_bitmask`."""
        if self.ended or self._matcher.is_stopped():
            import torch

            # A bitmask made under inference mode (a core's step) is written on the mask thread, which is not.
            with torch.inference_mode(bitmask.is_inference()):
                bitmask[row].zero_()
                word, bit = divmod(self._eos, 32)
                bitmask[row, word] = (1 << bit) - (1 << 32 if bit == 31 else 0)  # int32: bit 31 is the sign
            return
        words = bitmask.shape[1]
        pointer = bitmask.data_ptr() + row * words * 4
        self._matcher.unsafe_compute_mask_ptr(pointer, words * 4)

    @property
    def done(self) -> bool:
        """The grammar has accepted a complete value (only eos is allowed now), or eos itself."""
        return bool(self.ended or self._matcher.is_stopped() or self._matcher.is_accepting())


_EXECUTOR = LLExecutor()  # computes many rows' masks in parallel, outside the GIL


def fill_masks(matchers: list[Matcher], bitmask: torch.Tensor) -> None:
    """Row i of `bitmask` (from `allocate_bitmask`) gets matcher i's allowed tokens, all rows in one call."""
    words = bitmask.shape[1]
    running = []
    for row, matcher in enumerate(matchers):
        if matcher.ended or matcher._matcher.is_stopped():
            matcher.fill(bitmask, row)
        else:
            running.append((matcher._matcher, row))
    if running:
        _EXECUTOR.unsafe_compute_mask_ptr(running, bitmask.data_ptr(), words * 4, bitmask.shape[0])


class Grammars:
    """Grammars for one tokenizer; its llguidance tokenizer is built on first use (or by `warm`)."""

    def __init__(self, tokenizer: Any, vocab_size: int, eos_token_id: int, family: str = "") -> None:
        self._tokenizer, self._vocab_size, self._eos = tokenizer, vocab_size, eos_token_id
        # How a forced call is written: the template's format, else the family's.
        self.tool_format: ToolFormat = format_of(getattr(tokenizer, "chat_template", None), family)
        self._lock = threading.Lock()
        self._ll: LLTokenizer | None = None
        self._grammars: OrderedDict[str, LLMatcher] = OrderedDict()  # a fresh matcher per grammar

    def warm(self) -> None:
        """Build the tokenizer now (a second or two for Qwen's 151k tokens), not at the first request."""
        with self._lock:
            self._tokenizer_info()

    def warm_in_background(self) -> None:
        """`warm` on a thread of its own, as a core starts: a constrained request that comes sooner waits
        for it on the lock."""
        threading.Thread(target=self.warm, name="grammar-warm-up", daemon=True).start()

    def for_request(self, response_format: str) -> Matcher | None:
        """The matcher for a `Submit`'s response_format (canonical JSON; "" is none); raises GrammarError."""
        return self.matcher(json.loads(response_format)) if response_format else None

    def _tokenizer_info(self) -> LLTokenizer:
        if self._ll is None:
            wrapped = TokenizerWrapper(_TokenBytes(self._tokenizer, self._vocab_size, self._eos))
            self._ll = LLTokenizer(wrapped, n_vocab=self._vocab_size, eos_token=self._eos)
        return self._ll

    def matcher(self, response_format: dict[str, Any]) -> Matcher:
        """A fresh matcher for a json_object or json_schema response_format; raises GrammarError."""
        key = json.dumps(response_format, sort_keys=True, separators=(",", ":"))
        with self._lock:
            ll = self._tokenizer_info()
            prototype = self._grammars.get(key)
            if prototype is None:
                prototype = LLMatcher(ll, grammar(response_format, self.tool_format))
                if prototype.is_error():
                    raise GrammarError(prototype.get_error())
                self._grammars[key] = prototype
                while len(self._grammars) > CACHED_GRAMMARS:
                    self._grammars.popitem(last=False)
            self._grammars.move_to_end(key)
        # A copy of the parsed grammar at its start: a tenth of what parsing it again costs.
        return Matcher(prototype.deep_copy(), self._eos)


def allocate_bitmask(rows: int, vocab_size: int) -> torch.Tensor:
    """An int32 CPU bitmask [rows, ceil(vocab_size / 32)], all allowed; bit i of word w is token 32w+i."""
    import torch

    return torch.full((rows, (vocab_size + 31) // 32), -1, dtype=torch.int32)


_BIAS: dict[tuple[torch.dtype, torch.device], torch.Tensor] = {}


def apply_bitmask(logits: torch.Tensor, bitmask: torch.Tensor) -> None:
    """In place: logits [rows, vocab] of the tokens a bitmask [rows, words] disallows become -inf.

    The bitmask's bytes (little-endian) index a [256, 8] table of 0 / -inf; adding the gathered bias has
    no branch per token, so it costs the same whatever the mask."""
    import torch

    rows, vocab = logits.shape
    if bitmask.shape[0] != rows or bitmask.shape[1] * 32 < vocab:
        raise ValueError(f"bitmask {tuple(bitmask.shape)} does not cover logits {tuple(logits.shape)}")
    table = _BIAS.get((logits.dtype, logits.device))
    if table is None:
        bits = (torch.arange(256)[:, None] >> torch.arange(8)) & 1  # [256, 8]: bit i of byte b
        bias = torch.where(bits.bool(), 0.0, float("-inf"))
        table = _BIAS.setdefault((logits.dtype, logits.device), bias.to(logits.device, logits.dtype))
    indices = bitmask.to(logits.device, non_blocking=True).contiguous().view(torch.uint8).reshape(-1).int()
    logits.add_(torch.index_select(table, 0, indices).view(rows, -1)[:, :vocab])
