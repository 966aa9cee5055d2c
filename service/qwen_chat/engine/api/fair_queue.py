"""The waiting line of an engine, served round-robin by user: the next free decoding slot goes to the next
user in turn, not to whoever sent the most requests first.

Each user with requests waiting has a lane (first come, first served within it); `popleft` takes the head of
the first lane and moves that lane to the back. A user who sends 30 requests and a user who then sends one
see that one served second, not 31st. Turns are by request, not by token: a long reply holds its slot as
long as it decodes, as in vLLM's and TGI's schedulers.
"""

from __future__ import annotations

from collections import OrderedDict, deque
from collections.abc import Iterator
from typing import Generic, TypeVar

Item = TypeVar("Item")


class FairQueue(Generic[Item]):
    def __init__(self) -> None:
        self._lanes: OrderedDict[str | None, deque[Item]] = OrderedDict()
        self._size = 0

    def __len__(self) -> int:
        return self._size

    def __iter__(self) -> Iterator[Item]:
        for lane in self._lanes.values():
            yield from lane

    def __contains__(self, item: object) -> bool:
        return any(item in lane for lane in self._lanes.values())

    def append(self, user: str | None, item: Item) -> int:
        """Queue `item` for `user`; returns its place in line (1: served next), as things stand now."""
        lane = self._lanes.setdefault(user, deque())
        turn = len(lane)  # the user's requests served before this one
        lane.append(item)
        self._size += 1
        # Round r serves the r-th request of every lane longer than r, lanes in order; this one is served
        # in round `turn`, after every lane ahead of its own in that round.
        ahead, before = turn, True
        for other, queued in self._lanes.items():
            if other == user:
                before = False
            else:
                ahead += min(len(queued), turn + 1 if before else turn)
        return ahead + 1

    def popleft(self) -> Item:
        user, lane = next(iter(self._lanes.items()))
        item = lane.popleft()
        self._size -= 1
        if lane:
            self._lanes.move_to_end(user)
        else:
            del self._lanes[user]
        return item

    def remove(self, user: str | None, item: Item) -> None:
        lane = self._lanes[user]
        lane.remove(item)
        self._size -= 1
        if not lane:
            del self._lanes[user]
