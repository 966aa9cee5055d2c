"""What the tiny models are built from: a byte-level BPE tokenizer trained on a small corpus, with ChatML
special tokens and a chat template, and a random Qwen2 model of that vocabulary.

The model runs through exactly the same transformers code path as a real Qwen checkpoint: a Qwen2 config,
`save_pretrained` weights, a byte-level BPE tokenizer with ChatML special tokens and a chat template.
Its weights are random, so its replies are gibberish, but they stream, stop and sample like real ones.
"""

from __future__ import annotations

import itertools
import random
from typing import Any

import torch
from tokenizers import AddedToken, Tokenizer, decoders, models, pre_tokenizers, trainers
from transformers import PreTrainedTokenizerFast, Qwen2Config, Qwen2ForCausalLM

SPECIAL_TOKENS = ["<|endoftext|>", "<|im_start|>", "<|im_end|>"]

# Qwen2.5-Instruct's template (tools in the system turn, `<tool_call>` blocks for calls, tool results as
# `<tool_response>` in a user turn), with the tiny model's shorter default system prompt.
CHAT_TEMPLATE = (
    "{%- if tools %}"
    "{{- '<|im_start|>system\\n' }}"
    "{%- if messages[0]['role'] == 'system' %}{{- messages[0]['content'] }}"
    "{%- else %}{{- 'You are a helpful assistant.' }}{%- endif %}"
    "{{- '\\n\\n# Tools\\n\\nYou may call one or more functions to assist with the user query.\\n\\n"
    "You are provided with function signatures within <tools></tools> XML tags:\\n<tools>' }}"
    "{%- for tool in tools %}{{- '\\n' }}{{- tool | tojson }}{%- endfor %}"
    "{{- '\\n</tools>\\n\\nFor each function call, return a json object with function name and arguments "
    'within <tool_call></tool_call> XML tags:\\n<tool_call>\\n{\\"name\\": <function-name>, '
    '\\"arguments\\": <args-json-object>}\\n</tool_call><|im_end|>\\n\' }}'
    "{%- else %}"
    "{%- if messages[0]['role'] == 'system' %}"
    "{{- '<|im_start|>system\\n' + messages[0]['content'] + '<|im_end|>\\n' }}"
    "{%- else %}{{- '<|im_start|>system\\nYou are a helpful assistant.<|im_end|>\\n' }}{%- endif %}"
    "{%- endif %}"
    "{%- for message in messages %}"
    "{%- if (message.role == 'user') or (message.role == 'system' and not loop.first)"
    " or (message.role == 'assistant' and not message.tool_calls) %}"
    "{{- '<|im_start|>' + message.role + '\\n' + message.content + '<|im_end|>' + '\\n' }}"
    "{%- elif message.role == 'assistant' %}"
    "{{- '<|im_start|>' + message.role }}"
    "{%- if message.content %}{{- '\\n' + message.content }}{%- endif %}"
    "{%- for tool_call in message.tool_calls %}"
    "{%- if tool_call.function is defined %}{%- set tool_call = tool_call.function %}{%- endif %}"
    '{{- \'\\n<tool_call>\\n{\\"name\\": \\"\' }}{{- tool_call.name }}{{- \'\\", \\"arguments\\": \' }}'
    "{{- tool_call.arguments | tojson }}{{- '}\\n</tool_call>' }}"
    "{%- endfor %}"
    "{{- '<|im_end|>\\n' }}"
    "{%- elif message.role == 'tool' %}"
    "{%- if (loop.index0 == 0) or (messages[loop.index0 - 1].role != 'tool') %}"
    "{{- '<|im_start|>user' }}{%- endif %}"
    "{{- '\\n<tool_response>\\n' }}{{- message.content }}{{- '\\n</tool_response>' }}"
    "{%- if loop.last or (messages[loop.index0 + 1].role != 'tool') %}{{- '<|im_end|>\\n' }}{%- endif %}"
    "{%- endif %}"
    "{%- endfor %}"
    "{%- if add_generation_prompt %}{{- '<|im_start|>assistant\\n' }}{%- endif %}"
)
# Qwen2.5's ordinary added tokens for tool calls.
TOOL_TOKENS = ("<tool_call>", "</tool_call>", "<tool_response>", "</tool_response>")

_WORDS = """
    the a model chat token stream reply user assistant system hello world question answer kubernetes
    service cluster pod secret key socket batch queue latency prompt cache memory request response
    python quick brown fox jumps over lazy dog is are was were be have has do does can will would
    time first second per metric count rate limit error close open start done cancel reset history
    what why how when where who which this that these those and or but not with from into onto about
    café naïve déjà vu 你好 世界 こんにちは 😀 🚀 ümlaut ß 12 345 6789 , . ! ? : ; ( ) [ ] { } < > " '
""".split()  # noqa: SIM905


def _corpus(seed: int, lines: int = 3000) -> list[str]:
    rng = random.Random(seed)
    return [" ".join(rng.choice(_WORDS) for _ in range(rng.randint(3, 16))) for _ in range(lines)]


def train_bpe(vocab_size: int, seed: int, special_tokens: list[str]) -> Tokenizer:
    """A byte-level BPE trained on a generated corpus of chat words (Chinese, emoji, accents among them)."""
    tokenizer = Tokenizer(models.BPE())
    tokenizer.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    tokenizer.decoder = decoders.ByteLevel()
    trainer = trainers.BpeTrainer(
        vocab_size=vocab_size,
        special_tokens=special_tokens,
        initial_alphabet=pre_tokenizers.ByteLevel.alphabet(),
        show_progress=False,
    )
    tokenizer.train_from_iterator(_corpus(seed), trainer=trainer)
    return tokenizer


def build_tokenizer(
    vocab_size: int = 1024, seed: int = 0, added: tuple[str, ...] = (), chat_template: str = CHAT_TEMPLATE
) -> PreTrainedTokenizerFast:
    """Train a byte-level BPE tokenizer on a generated corpus, with Qwen's special tokens (and `added`
    ordinary tokens after them, as Qwen3's `<think>`)."""
    tokenizer = train_bpe(vocab_size, seed, SPECIAL_TOKENS)
    if added:
        tokenizer.add_tokens([AddedToken(token, special=False, normalized=False) for token in added])
    return PreTrainedTokenizerFast(
        tokenizer_object=tokenizer,
        eos_token="<|im_end|>",
        pad_token="<|endoftext|>",
        chat_template=chat_template,
        model_max_length=2048,
        clean_up_tokenization_spaces=False,
    )


def build_model(
    vocab_size: int,
    seed: int = 0,
    hidden_size: int = 128,
    layers: int = 2,
    classes: tuple[type[Any], type[Any]] = (Qwen2Config, Qwen2ForCausalLM),
    **config_values: Any,
) -> Any:
    """A Qwen2 causal LM (or another family's `classes`: config, model) with random weights scaled so that
    greedy decoding wanders instead of looping."""
    torch.manual_seed(seed)
    config_class, model_class = classes
    config = config_class(
        vocab_size=vocab_size,
        hidden_size=hidden_size,
        intermediate_size=hidden_size * 2,
        num_hidden_layers=layers,
        num_attention_heads=4,
        num_key_value_heads=2,
        max_position_embeddings=2048,
        tie_word_embeddings=False,
        bos_token_id=None,
        eos_token_id=2,  # <|im_end|>
        pad_token_id=0,
        # Large random weights give peaked, context-dependent logits: greedy text varies from step to step.
        initializer_range=0.5,
        dtype="float32",
        **config_values,
    )
    model = model_class(config)
    with torch.no_grad():
        # Random special-token logits would end most replies after a few tokens; keep them possible but rare.
        model.lm_head.weight[: len(SPECIAL_TOKENS)] *= 0.2
        # Favour merged tokens over the 256 single bytes, so replies read like words rather than bytes.
        model.lm_head.weight[len(SPECIAL_TOKENS) : len(SPECIAL_TOKENS) + 256] *= 0.3
    model.generation_config.eos_token_id = [2, 0]
    model.generation_config.pad_token_id = 0
    model.eval()
    return model


def distinct_greedy_tokens(model: Any, prompt_ids: list[int], steps: int = 64) -> int:
    """How many different tokens greedy decoding produces in `steps` steps: a check that it does not loop."""
    with torch.no_grad():
        out = model.generate(
            torch.tensor([prompt_ids]), max_new_tokens=steps, do_sample=False, eos_token_id=None
        )
    return len(set(itertools.chain.from_iterable(out[:, len(prompt_ids) :].tolist())))
