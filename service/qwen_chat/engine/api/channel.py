"""The two pipes between a worker and its engine process: commands down, events up.

Each is a `multiprocessing.connection.Connection` over a plain pipe file descriptor: length-prefixed frames,
one msgpack message (`wire.py`) per frame. A pipe, not a socket: nothing but the two processes can reach it,
and when one side dies the other reads end-of-file at once.
"""

from __future__ import annotations

import os
from dataclasses import dataclass
from multiprocessing.connection import Connection


@dataclass(frozen=True)
class ChildEnds:
    """The descriptors the child inherits (by number, on its command line)."""

    commands: int  # read end
    events: int  # write end


@dataclass
class Channel:
    commands: Connection  # the worker writes
    events: Connection  # the worker reads
    child: ChildEnds

    @classmethod
    def open(cls) -> Channel:
        command_read, command_write = os.pipe()
        event_read, event_write = os.pipe()
        return cls(
            Connection(command_write, readable=False),
            Connection(event_read, writable=False),
            ChildEnds(command_read, event_write),
        )

    def release_child_ends(self) -> None:
        """After the child started: only it may hold its ends, or its death would not close the pipe."""
        os.close(self.child.commands)
        os.close(self.child.events)

    def close_commands(self) -> None:
        """The child reads end-of-file and exits. The events end belongs to the thread reading it, which
        closes it when the child is gone."""
        self.commands.close()
