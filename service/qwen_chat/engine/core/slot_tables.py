"""Per batch slot, on the device: everything the batch sampler reads of a request, in tensors of fixed shape
and address, so a CUDA graph that captured a step reads this step's values when it replays.

A request owns one slot from its first step to its last. Its row holds its sampling parameters, the uniform
its next draw takes, which tokens it has seen (prompt and reply: the repetition penalty's) and how often it
generated each one (the presence and frequency penalties': OpenAI counts the reply only). The last row,
`null`, belongs to no request: rows of a step no request owns (padding, a request cancelled with its step in
flight) read and write it.

The host writes a row when its request first reaches a step (`start`) and the step's uniforms (`draw_next`);
the sampled tokens are added on the device by the step itself (`add`), so the tables are current even when
the next step is prepared before this one's tokens reach the host (async batching). Host writes go on the
stream the steps run on (`stream`), after the step in flight and before the next."""

from __future__ import annotations

from collections.abc import Callable, Sequence
from contextlib import nullcontext
from typing import Any

import torch

from qwen_chat.sampling_params import SamplingParams


class SlotTables:
    def __init__(self, slots: int, vocab_size: int, device: torch.device) -> None:
        rows = slots + 1
        self.null = slots
        self.stream: Callable[[], Any] = lambda: None  # the stream steps run on (None: the current one)
        self._device = device
        zeros = lambda dtype: torch.zeros(rows, dtype=dtype, device=device)  # noqa: E731
        self.temperature = zeros(torch.float32)  # 0: greedy
        self.top_p = zeros(torch.float32) + 1.0
        self.top_k = zeros(torch.long)
        self.min_p = zeros(torch.float32)
        self.penalty = zeros(torch.float32) + 1.0  # repetition penalty
        self.presence = zeros(torch.float32)
        self.frequency = zeros(torch.float32)
        self.uniform = zeros(torch.float64)
        self.seen = torch.zeros(rows, vocab_size, dtype=torch.bool, device=device)
        self.counts = torch.zeros(rows, vocab_size, dtype=torch.int32, device=device)

    def start(
        self, slot: int, params: SamplingParams, sequence: Sequence[int], generated: Sequence[int]
    ) -> None:
        """Slot `slot` now holds a request with `params`, whose tokens so far are `sequence`, ending with the
        reply tokens `generated` (a request the manager paused comes back with its reply in its prompt)."""
        values = (
            params.temperature,
            params.top_p,
            params.min_p,
            params.repetition_penalty,
            params.presence_penalty,
            params.frequency_penalty,
        )
        tables = (self.temperature, self.top_p, self.min_p, self.penalty, self.presence, self.frequency)
        with self._on_stream():
            floats = self._staged(values, torch.float32)
            for table, value in zip(tables, floats, strict=True):
                table[slot] = value
            self.top_k[slot] = params.top_k
            self.seen[slot] = False
            self.seen[slot, self._staged(sequence, torch.long)] = True
            self.counts[slot] = 0
            if generated:
                ones = torch.ones(len(generated), dtype=torch.int32, device=self._device)
                self.counts[slot].index_add_(0, self._staged(generated, torch.long), ones)

    def draw_next(self, slots: list[int], uniforms: list[float]) -> None:
        """The uniform each of `slots` draws its next token with."""
        if not slots:
            return
        with self._on_stream():
            packed = self._staged([slots, uniforms], torch.float64)
            self.uniform[packed[0].long()] = packed[1]

    def add(self, slots: torch.Tensor, tokens: torch.Tensor) -> None:
        """On the device, inside the step: each of `slots` generated its token of `tokens`. Only rows owned
        by no request share a slot (`null`), so a plain write serves as an increment."""
        self.seen[slots, tokens] = True
        self.counts[slots, tokens] = self.counts[slots, tokens] + 1

    def _on_stream(self) -> Any:
        stream = self.stream()
        return torch.cuda.stream(stream) if stream is not None else nullcontext()

    def _staged(self, values: Any, dtype: torch.dtype) -> torch.Tensor:
        """`values` on the device. On CUDA through pinned memory, so that the copy waits for nothing on the
        host: from pageable memory it would wait for the step in flight, and undo async batching's overlap
        (torch keeps the pinned block until the copy is done)."""
        pinned = self._device.type == "cuda"
        host = torch.tensor(list(values), dtype=dtype, pin_memory=pinned)
        return host.to(self._device, non_blocking=True)
