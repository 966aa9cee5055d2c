"""Stop strings: the reply ends before the first of them, wherever the deltas split it."""

from __future__ import annotations


class StopStrings:
    """Cuts the reply before the first stop string, holding back text that may be the start of one."""

    def __init__(self, stops: list[str]) -> None:
        self._stops = [s for s in stops if s]
        self._held = ""
        self.stopped = False

    def feed(self, text: str) -> str:
        if not self._stops:
            return text
        buffered = self._held + text
        cut = min((buffered.find(s) for s in self._stops if s in buffered), default=-1)
        if cut >= 0:
            self.stopped = True
            self._held = ""
            return buffered[:cut]
        keep = max((n for s in self._stops for n in range(1, len(s)) if buffered.endswith(s[:n])), default=0)
        self._held = buffered[len(buffered) - keep :] if keep else ""
        return buffered[: len(buffered) - keep]

    def flush(self) -> str:
        held, self._held = self._held, ""
        return held
