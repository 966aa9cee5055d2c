"""What crosses between the API side of an engine and its core (`core/`), in a thread or a child process.

The API side sends a `Submit` per request and a `Cancel` when one stops early; the core answers with one
`Step` per decode step, carrying every row that got new tokens (or finished) in that step, never one
message per token per row. A core in a child process first says `Ready` (or `LoadFailed`). The structs are
msgspec's: encoded as msgpack arrays, they cost about a microsecond per row.
"""

from __future__ import annotations

import enum

import msgspec

from qwen_chat.sampling_params import SamplingParams

MAX_TOP_LOGPROBS = 20  # OpenAI's limit for top_logprobs


class RowState(enum.IntEnum):
    RUNNING = 0
    FINISHED = 1  # the core stopped the request: a stop token or its max_new_tokens
    FAILED = 2


class Submit(msgspec.Struct, array_like=True, gc=False, tag=True):
    """One request, as the core runs it: its sampling parameters whole (a new one is a field of
    `SamplingParams`, not a change here), `max_new_tokens` among them already within the model's context."""

    request_id: str
    prompt_ids: list[int]
    sampling: SamplingParams
    stop_token_ids: list[int]
    response_format: str = ""  # canonical JSON of the request's response_format; "": unconstrained
    top_logprobs: int = -1  # -1: no log-probabilities; k >= 0: the sampled token's and the k likeliest

    @property
    def max_new_tokens(self) -> int:
        return self.sampling.max_new_tokens


class Cancel(msgspec.Struct, array_like=True, gc=False, tag=True):
    request_id: str


class Shutdown(msgspec.Struct, array_like=True, gc=False, tag=True):
    """Stop the core and exit; nothing is running any more."""


class TokenLogprob(msgspec.Struct, array_like=True, gc=False):
    """One generated token's log-probability and the likeliest alternatives, from the row it was sampled
    from (after the repetition penalty and the grammar mask, before temperature)."""

    logprob: float
    top_ids: list[int]
    top_logprobs: list[float]


class Row(msgspec.Struct, array_like=True, gc=False):
    request_id: str
    token_ids: list[int]  # new since the row's last step
    state: RowState = RowState.RUNNING
    error: str = ""
    logprobs: list[TokenLogprob] = msgspec.field(default_factory=list)  # one per token, when asked for
    # On a request's first row: its prompt tokens looked up in the prefix cache (the batch core's shared
    # pages, the hybrid core's kept conversation states), and of those the ones taken from it, not prefilled.
    queried_tokens: int = 0
    cached_tokens: int = 0


class Step(msgspec.Struct, array_like=True, gc=False, tag=True):
    rows: list[Row]
    seconds: float = 0.0  # the forward pass and sampling of this step; 0: the core does not time steps
    preempted: int = 0  # requests paused (their cache freed) since the last step
    cache_usage: float = -1.0  # 0..1 of the KV cache in use; negative: not measured this step
    kept_states: int = -1  # conversation states the core keeps for a next turn; negative: it keeps none


class ModelFacts(msgspec.Struct, array_like=True, gc=False):
    """What the API side needs to know of the model the core loaded."""

    context_length: int
    stop_token_ids: list[int]
    max_input_tokens: int
    device: str
    dtype: str
    kv_cache_pages: int = 0  # 0: the core has no paged cache
    kv_page_size: int = 0
    family: str = "qwen2"  # the checkpoint's model_type (engine/model/families.py)
    max_running: int = 0  # the requests the core decodes at once; the worker admits that many
    tokenizer_class: str = ""  # `module:name` of the tokenizer class the core's AutoTokenizer loaded
    attention: str = ""  # the attention implementation the model runs
    fast_paths: list[str] = []  # transformers' fast paths the core runs with (engine/core/fast_paths.py)


class Ready(msgspec.Struct, array_like=True, gc=False, tag=True):
    facts: ModelFacts


class LoadFailed(msgspec.Struct, array_like=True, gc=False, tag=True):
    reason: str


Command = Submit | Cancel | Shutdown
Event = Step | Ready | LoadFailed

encode = msgspec.msgpack.Encoder().encode
decode_command = msgspec.msgpack.Decoder(Command).decode
decode_event = msgspec.msgpack.Decoder(Event).decode
