"""The engine's waiting line takes turns by user: a flood from one key waits behind everyone else's next."""

from __future__ import annotations

import pytest

from qwen_chat.engine.api.fair_queue import FairQueue


def drain(queue: FairQueue[str]) -> list[str]:
    return [queue.popleft() for _ in range(len(queue))]


def test_a_late_single_request_is_served_before_a_floods_tail() -> None:
    queue: FairQueue[str] = FairQueue()
    for n in range(30):
        queue.append("flood", f"f{n}")
    assert queue.append("bob", "b0") == 2, "second in line: after the flood's head, not 31st"
    assert drain(queue)[:4] == ["f0", "b0", "f1", "f2"]


def test_turns_rotate_over_users_first_come_first_served_within_each() -> None:
    queue: FairQueue[str] = FairQueue()
    for user, item in [("a", "a0"), ("a", "a1"), ("a", "a2"), ("b", "b0"), ("b", "b1"), ("c", "c0")]:
        queue.append(user, item)
    assert drain(queue) == ["a0", "b0", "c0", "a1", "b1", "a2"]
    assert not queue and len(queue) == 0


@pytest.mark.parametrize(
    "arrivals",
    [
        ["a", "a", "b", "a", "c", "b", "b", "c", "a"],
        ["x"] * 5 + ["y", "z", "y", "x", "z", "z", "z"],
        [None, None, "u", None, "u"],  # None: the anonymous user, one lane like any other
    ],
)
def test_the_reported_place_is_where_the_request_is_served(arrivals: list[str | None]) -> None:
    """Each place `append` reports holds if nothing else arrives: checked by serving the line."""
    for count in range(1, len(arrivals) + 1):
        queue: FairQueue[str] = FairQueue()
        place = 0
        for index, user in enumerate(arrivals[:count]):
            place = queue.append(user, f"r{index}")
        assert drain(queue).index(f"r{count - 1}") + 1 == place, arrivals[:count]


def test_a_removed_request_leaves_the_line_and_its_turn() -> None:
    queue: FairQueue[str] = FairQueue()
    queue.append("a", "a0")
    queue.append("b", "b0")
    queue.append("a", "a1")
    queue.remove("b", "b0")
    assert "b0" not in queue and "a1" in queue and len(queue) == 2
    assert list(queue) == ["a0", "a1"]
    assert drain(queue) == ["a0", "a1"]
