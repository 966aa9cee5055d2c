"""Per batch slot, a request's token ids on the device, appended to in place: what the penalties read.

Row `slot` holds `length[slot]` ids of the request that owns the slot; the entries past them repeat the row's
first id, so a gather over a row's columns only ever sees ids of that row (the repetition penalty, whose
scatter then writes the same value twice), and `counted` says which entries are real (the presence and
frequency penalties). The table doubles its width when a row outgrows it.

Each step `catch_up` takes, per row, the ids of its request's sequence it does not hold yet (a request new to
the slot first empties the row), and `extend` writes them all at once.
"""

from __future__ import annotations

from typing import Any

import torch


def since(initial: Any, generated: Any, start: int) -> list[int]:
    """The ids of initial + generated from `start` on, without copying what comes before."""
    if start >= len(initial):
        return list(generated[start - len(initial) :])
    return list(initial[start:]) + list(generated)


class TokenTable:
    def __init__(self, slots: int, device: torch.device, width: int = 1024) -> None:
        self._ids = torch.zeros(slots, width, dtype=torch.long, device=device)
        self.length = [0] * slots
        self._owner: list[object | None] = [None] * slots
        self._device = device

    def catch_up(self, slot: int, owner: object, initial: Any, generated: Any, start: int = 0) -> list[int]:
        """The ids of `owner`'s sequence (`initial` + `generated`, from `start` on) that `slot`'s row does not
        hold yet; a row another request held is emptied first, its entries repeating `initial[0]`."""
        if self._owner[slot] is not owner:
            self._owner[slot] = owner
            self.length[slot] = 0
            self._ids[slot].fill_(initial[0])
        return since(initial, generated, start + self.length[slot])

    def extend(self, slots: list[int], tokens: list[list[int]]) -> None:
        """Append each list of ids to its slot's row, all at once."""
        where: list[int] = []
        columns: list[int] = []
        flat: list[int] = []
        for slot, new in zip(slots, tokens, strict=True):
            start = self.length[slot]
            self._grow(start + len(new))
            where.extend([slot] * len(new))
            columns.extend(range(start, start + len(new)))
            flat.extend(new)
            self.length[slot] = start + len(new)
        if flat:
            index = torch.tensor([where, columns, flat], dtype=torch.long, device=self._device)
            self._ids[index[0], index[1]] = index[2]

    def rows(self, slots: torch.Tensor, slot_list: list[int]) -> tuple[torch.Tensor, torch.Tensor]:
        """The ids of `slots` (the same slots as a tensor and as a list), as wide as the longest of them, and
        which entries are real."""
        width = max(1, max(self.length[slot] for slot in slot_list))
        ids = self._ids[slots, :width]
        lengths = torch.tensor([self.length[slot] for slot in slot_list], device=self._device)
        counted = torch.arange(width, device=self._device) < lengths.unsqueeze(-1)
        return ids, counted

    def _grow(self, length: int) -> None:
        capacity = self._ids.shape[1]
        if length <= capacity:
            return
        while capacity < length:
            capacity *= 2
        grown = self._ids[:, :1].expand(-1, capacity).clone()
        grown[:, : self._ids.shape[1]] = self._ids
        self._ids = grown
