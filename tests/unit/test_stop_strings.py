"""Stop strings cut the reply before the first of them, however the deltas split it."""

from __future__ import annotations

import pytest

from qwen_chat.chat.stop_strings import StopStrings


def feed_all(stops: list[str], deltas: list[str]) -> tuple[str, bool]:
    cutter = StopStrings(stops)
    out = "".join(cutter.feed(delta) for delta in deltas if not cutter.stopped)
    if not cutter.stopped:
        out += cutter.flush()
    return out, cutter.stopped


@pytest.mark.parametrize(
    ("stops", "deltas", "expected", "stopped"),
    [
        ([], ["Hello", " world"], "Hello world", False),
        (["END"], ["Hello END and more"], "Hello ", True),
        (["END"], ["Hello E", "N", "D more"], "Hello ", True),  # split over three deltas
        (["END"], ["Hello E", "NOUGH"], "Hello ENOUGH", False),  # held back, then released
        (["END"], ["tail E"], "tail E", False),  # a held prefix is flushed at the end
        (["c", "abc"], ["xxabc"], "xx", True),  # the earliest stop wins, not the first listed
        (["", "\n\n"], ["one\n", "\ntwo"], "one", True),  # empty stops are ignored
    ],
)
def test_reply_ends_before_the_first_stop_string(
    stops: list[str], deltas: list[str], expected: str, stopped: bool
) -> None:
    assert feed_all(stops, deltas) == (expected, stopped)


def test_text_that_may_start_a_stop_is_held_not_sent() -> None:
    cutter = StopStrings(["<|user|>"])
    assert cutter.feed("answer <|us") == "answer "
    assert cutter.feed("ual") == "<|usual"
    assert not cutter.stopped
