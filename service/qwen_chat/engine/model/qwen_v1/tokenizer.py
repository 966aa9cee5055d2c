"""Qwen v1's tokenizer rebuilt from its `qwen.tiktoken` file as a fast tokenizer, without remote code.

`qwen.tiktoken` lists byte sequences and their BPE ranks (one `base64 rank` pair per line). tiktoken merges,
at each step, the adjacent pair whose concatenation has the lowest rank; a fast BPE tokenizer merges the pair
listed first. So each multi-byte token's one merge is recovered by running BPE on its own bytes with only the
lower ranks (as llama.cpp's converter does): the last step must join exactly two parts. With the vocabulary
looked up whole first (`ignore_merges`), Qwen's split pattern and NFC normalisation, it encodes as
`QWenTokenizer` does. Special tokens keep their original ids, right after the ranks.
"""

from __future__ import annotations

import base64
from pathlib import Path

from tokenizers import AddedToken, Regex, Tokenizer, decoders, normalizers, pre_tokenizers
from tokenizers.models import BPE
from transformers import PreTrainedTokenizerFast

from qwen_chat.engine import hf_internals
from qwen_chat.engine.model.prompts import CHATML_SYSTEM

VOCAB_FILE = "qwen.tiktoken"
# QWenTokenizer's split pattern: like cl100k's, but digits one by one.
PATTERN = (
    r"""(?i:'s|'t|'re|'ve|'m|'ll|'d)|[^\r\n\p{L}\p{N}]?\p{L}+|\p{N}| ?[^\s\p{L}\p{N}]+[\r\n]*|\s*[\r\n]+|"""
    r"""\s+(?!\S)|\s+"""
)
ENDOFTEXT, IM_START, IM_END = "<|endoftext|>", "<|im_start|>", "<|im_end|>"
SPECIAL_TOKENS = (ENDOFTEXT, IM_START, IM_END, *(f"<|extra_{i}|>" for i in range(205)))
# Where a turn ends, as Qwen v1's `chat()` stops (`get_stop_words_ids`): its generation config names only
# <|endoftext|>, so a reply would otherwise run on into a made-up next turn.
STOP_TOKENS = (IM_END, IM_START, ENDOFTEXT)
# ChatML as Qwen v1's `make_context` lays it out, with its default system prompt. The service encodes each
# part on its own (engine/model/prompts.py), so message text stays text; the template is for other readers.
CHAT_TEMPLATE = (
    "{%- for m in messages %}"
    "{%- if loop.first and m['role'] != 'system' %}"
    "{{- '<|im_start|>system\\n" + CHATML_SYSTEM + "<|im_end|>\\n' }}"
    "{%- endif %}"
    "{{- '<|im_start|>' + m['role'] + '\\n' + m['content'] + '<|im_end|>\\n' }}"
    "{%- endfor %}"
    "{%- if add_generation_prompt %}{{- '<|im_start|>assistant\\n' }}{%- endif %}"
)


def read_ranks(path: Path) -> dict[bytes, int]:
    ranks: dict[bytes, int] = {}
    for number, line in enumerate(path.read_bytes().splitlines(), 1):
        if not line:
            continue
        try:
            token, rank = line.split()
            ranks[base64.b64decode(token, validate=True)] = int(rank)
        except ValueError as exc:
            raise ValueError(f"{path.name} line {number} is not `base64 rank`") from exc
    if sorted(ranks.values()) != list(range(len(ranks))):
        raise ValueError(f"{path.name}: the ranks are not 0..{len(ranks) - 1}, each once")
    return ranks


def _merge_of(token: bytes, rank: int, ranks: dict[bytes, int]) -> tuple[bytes, bytes]:
    """The two parts BPE joins last to make `token`, using ranks below `rank` only."""
    parts = [token[i : i + 1] for i in range(len(token))]
    while len(parts) > 2:
        best = None
        for i in range(len(parts) - 1):
            joined = ranks.get(parts[i] + parts[i + 1])
            if joined is not None and joined < rank and (best is None or joined < best[0]):
                best = (joined, i)
        if best is None:
            break
        i = best[1]
        parts[i : i + 2] = [parts[i] + parts[i + 1]]
    if len(parts) != 2:
        raise ValueError(f"token of rank {rank} ({token!r}) is not the merge of two lower-ranked tokens")
    return parts[0], parts[1]


def vocabulary(path: Path) -> Tokenizer:
    """The ranks of `path` as a fast BPE tokenizer with Qwen's split pattern, with no added tokens yet."""
    ranks = read_ranks(path)
    byte_chars = hf_internals.bytes_to_unicode()

    def text(token: bytes) -> str:
        return "".join(byte_chars[b] for b in token)

    vocab = {text(token): rank for token, rank in ranks.items()}
    ordered = sorted((rank, token) for token, rank in ranks.items() if len(token) > 1)
    merges = []
    for rank, token in ordered:
        left, right = _merge_of(token, rank, ranks)
        merges.append((text(left), text(right)))
    backend = Tokenizer(BPE(vocab, merges, fuse_unk=False, ignore_merges=True))
    backend.normalizer = normalizers.NFC()
    backend.pre_tokenizer = pre_tokenizers.Sequence(
        [
            pre_tokenizers.Split(Regex(PATTERN), behavior="isolated"),
            pre_tokenizers.ByteLevel(add_prefix_space=False, use_regex=False),
        ]
    )
    backend.decoder = decoders.ByteLevel()
    return backend


def build_tokenizer(path: Path, context_length: int) -> PreTrainedTokenizerFast:
    backend = vocabulary(path)
    first_special = backend.get_vocab_size()
    backend.add_special_tokens([AddedToken(t, special=True, normalized=False) for t in SPECIAL_TOKENS])
    for offset, special in enumerate(SPECIAL_TOKENS):
        if backend.token_to_id(special) != first_special + offset:
            raise ValueError(f"{path.name} already holds {special}: the special tokens would move")
    return PreTrainedTokenizerFast(
        tokenizer_object=backend,
        eos_token=IM_END,
        pad_token=ENDOFTEXT,
        chat_template=CHAT_TEMPLATE,
        model_max_length=context_length,
        clean_up_tokenization_spaces=False,
    )
