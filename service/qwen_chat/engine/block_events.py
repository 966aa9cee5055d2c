"""What an engine process tells its pod's KV-event publisher (`runtime/kv_events.py`): the prefix-cache
blocks its cache stores and removes, followed on the manager's thread (`hf_internals/blocks.py`).

The manager's thread only queues each change; a sender thread pushes them over ZMQ (a PUSH socket to the
publisher's PULL socket in the state folder), batched, tagged with this process's pid. The publisher
speaks for the pod: it announces a block when the first engine holds it and removes it when the last one
drops it. A push never waits: when the publisher is gone and the socket's queue is full, changes are
dropped, counted and logged once, and decoding goes on; the next push that gets through starts with
`Cleared`, so the pod never announces a block this engine may have dropped (it under-reports until the
engine stores blocks again)."""

from __future__ import annotations

import os
import queue
import threading
from pathlib import Path

import msgspec
import structlog

log = structlog.get_logger(__name__)

# Under STATE_DIR: where the pod's publisher pulls the engines' changes from.
SOCKET_NAME = "kv-events.sock"
# Pushes queued in the socket before further ones are dropped (the publisher is stalled).
_SEND_QUEUE = 1_000


class Stored(msgspec.Struct, array_like=True, gc=False, tag=True):
    """Full blocks whose hashes are new to this engine's cache, in chain order: `tokens` holds
    `block_size` tokens per hash, and `parent` is the hash of the block before the first (None: the first
    block of a prompt)."""

    hashes: list[int]
    parent: int | None
    tokens: list[int]
    block_size: int


class Removed(msgspec.Struct, array_like=True, gc=False, tag=True):
    hashes: list[int]


class Cleared(msgspec.Struct, array_like=True, gc=False, tag=True):
    """This engine holds no block any more (a new cache, or its reset)."""


Change = Stored | Removed | Cleared


class Changes(msgspec.Struct, array_like=True, gc=False):
    """One push: an engine's changes in the order its cache made them."""

    source: int  # the engine process's pid
    changes: list[Change]


_encoder = msgspec.msgpack.Encoder()
_decoder = msgspec.msgpack.Decoder(Changes)


def encode(changes: Changes) -> bytes:
    return _encoder.encode(changes)


def decode(frame: bytes) -> Changes:
    return _decoder.decode(frame)


def socket_address(state_dir: Path) -> str:
    return f"ipc://{state_dir / SOCKET_NAME}"


class BlockEvents:
    """The engine's side (a `hf_internals.blocks.BlockSink`): queue from the manager's thread, push from
    a thread of its own (a ZMQ socket belongs to one thread). If that thread fails, changes are no longer
    queued: the engine decodes on, and the pod's publisher forgets this engine when it ends."""

    def __init__(self, address: str) -> None:
        self._address = address
        self._queue: queue.SimpleQueue[Change | None] = queue.SimpleQueue()
        self.dropped = 0
        self._stale = False  # changes were dropped: the next push starts over with Cleared
        self._failed = False
        self._thread = threading.Thread(target=self._push, name="kv-events", daemon=True)
        self._thread.start()

    def stored(self, hashes: list[int], parent: int | None, tokens: list[int], block_size: int) -> None:
        if not self._failed:
            self._queue.put(Stored(hashes, parent, tokens, block_size))

    def removed(self, hashes: list[int]) -> None:
        if not self._failed:
            self._queue.put(Removed(hashes))

    def cleared(self) -> None:
        if not self._failed:
            self._queue.put(Cleared())

    def close(self) -> None:
        self._queue.put(None)
        self._thread.join(timeout=2)

    def _push(self) -> None:
        try:
            self._push_until_closed()
        except Exception as exc:  # a socket that cannot connect, a full disk...: never the decoding's
            self._failed = True
            log.error("kv_events_failed", address=self._address, error=f"{type(exc).__name__}: {exc}")

    def _push_until_closed(self) -> None:
        import zmq

        context = zmq.Context()
        socket = context.socket(zmq.PUSH)
        socket.setsockopt(zmq.SNDHWM, _SEND_QUEUE)
        socket.setsockopt(zmq.IMMEDIATE, 1)  # nothing queues while the publisher is not there
        socket.setsockopt(zmq.LINGER, 1000)  # what is queued at exit gets a second to leave
        source = os.getpid()
        try:
            socket.connect(self._address)
            while True:
                changes = [self._queue.get()]
                while len(changes) < 256 and not self._queue.empty():
                    changes.append(self._queue.get())
                done = changes[-1] is None
                batch = [change for change in changes if change is not None]
                if batch:
                    self._send(socket, Changes(source, batch))
                if done:
                    return
        finally:
            socket.close()
            context.term()

    def _send(self, socket: object, changes: Changes) -> None:
        import zmq

        stale = self._stale
        if stale:  # what the publisher knows of this engine is wrong: it forgets all of it
            changes.changes.insert(0, Cleared())
        try:
            socket.send(encode(changes), zmq.NOBLOCK)  # type: ignore[attr-defined]
        except zmq.Again:
            self._stale = True
            if not self.dropped:
                log.warning(
                    "kv_events_dropped",
                    address=self._address,
                    detail="the pod's KV-event publisher takes no changes: it forgets this engine's blocks "
                    "when changes go through again, and announces only blocks stored after that",
                )
            self.dropped += len(changes.changes)
            return
        self._stale = False
        if stale:
            log.info("kv_events_resumed", dropped=self.dropped)
