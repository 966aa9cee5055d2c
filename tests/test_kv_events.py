"""The pod's KV-cache events, as llm-d's precise prefix-cache scorer receives them: a real `qwen-chat serve`
with two workers publishes on one ZMQ PUB socket, and a subscriber here decodes every message with a decoder
written from vLLM's format (three frames: topic `kv@<pod>@<model>`, an 8-byte big-endian sequence number, a
msgpack `[timestamp, [event, ...], data_parallel_rank]`), not with the service's code.

One conversation per worker (each `/ws` socket stays on the worker that accepted it): a chat's prompt blocks
are stored with exactly its token ids (those `/v1/chat/completions/render` answers); the same prompt on the
other worker stores nothing new; one worker's engine killed removes only what that worker alone held; a
cache too small for the next prompts evicts, and the evicted blocks are removed."""

from __future__ import annotations

import json
import os
import signal
import socket
import time
from collections.abc import Iterator
from contextlib import AsyncExitStack
from pathlib import Path
from typing import Any

import httpx
import msgpack
import pytest
import zmq

from tests.support.live_server import free_port
from tests.support.serve_process import ServeProcess, open_on_every_worker, serve_process
from tests.support.wsclient import until_end

pytestmark = pytest.mark.anyio

PAGE = 32  # the batch engine's page on CPU: the block size of every event
SHARED = " ".join(f"Rule {n}: answer briefly and politely." for n in range(14))  # several pages
MODEL = "tiny-events"


class Subscriber:
    """A ZMQ SUB socket and a decoder of vLLM's KV-event messages."""

    def __init__(self, endpoint: str) -> None:
        self._context = zmq.Context()
        self._socket = self._context.socket(zmq.SUB)
        self._socket.setsockopt(zmq.SUBSCRIBE, b"kv@")
        self._socket.connect(endpoint)
        self.messages: list[tuple[str, int, list[Any]]] = []  # topic, sequence, events

    def receive(self, seconds: float) -> None:
        """Everything that arrives within `seconds`."""
        deadline = time.monotonic() + seconds
        while (left := deadline - time.monotonic()) > 0:
            if not self._socket.poll(int(left * 1000) + 1):
                return
            frames = self._socket.recv_multipart()
            assert len(frames) == 3, frames
            topic, sequence, payload = frames
            assert len(sequence) == 8
            batch = msgpack.unpackb(payload, raw=False)
            assert isinstance(batch, list) and len(batch) in (2, 3), batch
            timestamp, events = batch[0], batch[1]
            assert isinstance(timestamp, float) and abs(timestamp - time.time()) < 60
            assert batch[2:] in ([], [None])
            for event in events:
                _check_event(event)
            self.messages.append((topic.decode(), int.from_bytes(sequence, "big"), events))

    def events(self, kind: str) -> list[list[Any]]:
        return [event for _, _, events in self.messages for event in events if event[0] == kind]

    def wait_for(self, found: Any, seconds: float = 15) -> None:
        deadline = time.monotonic() + seconds
        while not found():
            assert time.monotonic() < deadline, "the awaited KV event never came"
            self.receive(0.2)

    def close(self) -> None:
        self._socket.close(linger=0)
        self._context.term()


def _check_event(event: list[Any]) -> None:
    """vLLM's array-encoded events, the fields llm-d's adapter reads."""
    kind = event[0]
    if kind == "BlockStored":
        hashes, parent, tokens, size = event[1:5]
        assert size == PAGE and len(tokens) == size * len(hashes) > 0
        assert all(isinstance(h, bytes) and len(h) == 8 for h in hashes)
        assert parent is None or (isinstance(parent, bytes) and len(parent) == 8)
        assert all(isinstance(t, int) for t in tokens)
        assert event[5:] in ([], [None], [None, "GPU"], [None, "GPU", None])  # lora_id, medium, lora_name
    elif kind == "BlockRemoved":
        assert event[1] and all(isinstance(h, bytes) and len(h) == 8 for h in event[1])
        assert event[2:] in ([], ["GPU"])
    else:
        assert event == ["AllBlocksCleared"], event


def _stored_chain(subscriber: Subscriber, prompt: list[int]) -> list[bytes]:
    """The hashes of `prompt`'s full pages, from the BlockStored events whose tokens are its pages (each
    event carries a run of pages and the hash of the page before it)."""
    by_parent: dict[bytes | None, list[Any]] = {}
    for event in subscriber.events("BlockStored"):
        by_parent.setdefault(event[2], []).append(event)
    chain: list[bytes] = []
    parent: bytes | None = None
    while len(chain) < len(prompt) // PAGE:
        here = prompt[len(chain) * PAGE :]
        matching = [e for e in by_parent.get(parent, []) if here[: len(e[3])] == e[3]]
        if not matching:
            break
        chain += matching[0][1]
        parent = chain[-1]
    return chain


@pytest.fixture
def server(tmp_path: Path, tiny_model_dir: Path) -> Iterator[tuple[ServeProcess, Subscriber]]:
    endpoint = f"tcp://127.0.0.1:{free_port()}"
    settings = {
        "kv_events_endpoint": endpoint,
        "served_model_name": MODEL,
        "render_without_key": "true",
        # 40 pages (49 once rounded to whole sectors): a few distinct long prompts fill it, so it evicts.
        "kv_cache_tokens": str(40 * PAGE),
        "max_input_tokens": "900",
        "max_new_tokens": "8",
    }
    subscriber = Subscriber(endpoint)
    try:
        with serve_process(tmp_path, tiny_model_dir, workers=2, **settings) as live:
            live.wait_ready()
            yield live, subscriber
    finally:
        subscriber.close()


def _render(live: ServeProcess, messages: list[dict[str, str]]) -> list[int]:
    response = httpx.post(
        live.http + "/v1/chat/completions/render", json={"model": MODEL, "messages": messages}
    )
    assert response.status_code == 200, response.text  # no key: RENDER_WITHOUT_KEY
    ids: list[int] = response.json()["token_ids"]
    return ids


async def _chat(ws: Any, messages: list[dict[str, str]]) -> dict[str, Any]:
    await ws.send(json.dumps({"type": "chat", "messages": messages, "params": {"max_new_tokens": 4}}))
    done = (await until_end(ws))[-1]
    assert done["type"] == "done", done
    return done


def _conversation(user: str) -> list[dict[str, str]]:
    return [{"role": "system", "content": SHARED}, {"role": "user", "content": user}]


async def test_the_pod_publishes_its_blocks_as_the_precise_prefix_scorer_reads_them(
    server: tuple[ServeProcess, Subscriber],
) -> None:
    live, subscriber = server
    subscriber.receive(0.5)  # the SUB socket is connected before anything below is stored
    async with AsyncExitStack() as stack:
        held = await open_on_every_worker(stack, live, per_worker=1)
        (first_worker, (first, *_)), (_, (second, *_)) = held.items()

        # A chat's prompt blocks are stored with exactly its token ids, chained from no parent.
        shared_chat = _conversation("What is rule 3?")
        shared_ids = _render(live, shared_chat)
        done = await _chat(first, shared_chat)
        assert done["usage"]["prompt_tokens"] == len(shared_ids) > 8 * PAGE
        pages = len(shared_ids) // PAGE
        subscriber.wait_for(lambda: len(_stored_chain(subscriber, shared_ids)) == pages)
        shared_chain = _stored_chain(subscriber, shared_ids)
        stored_count = len(subscriber.events("BlockStored"))

        # The same prompt on the other worker: its blocks are the pod's already, so nothing new of them.
        done = await _chat(second, shared_chat)
        subscriber.receive(1.0)
        new = [e for e in subscriber.events("BlockStored")[stored_count:] if set(e[1]) & set(shared_chain)]
        assert new == [], "a block another worker already holds is announced once"

        # The first worker alone holds a second conversation's own pages (past the shared system prompt).
        own_chat = _conversation(" ".join(f"Tell me about topic {n} in detail." for n in range(8)))
        own_ids = _render(live, own_chat)
        await _chat(first, own_chat)
        subscriber.wait_for(lambda: len(_stored_chain(subscriber, own_ids)) == len(own_ids) // PAGE)
        own_chain = _stored_chain(subscriber, own_ids)
        common = [h for h, k in zip(own_chain, shared_chain, strict=False) if h == k]
        only_first = own_chain[len(common) :]
        assert common and only_first

        # Its engine dies: what it alone held is removed, what the other worker also holds is not.
        engine = live.engine_of(first_worker)
        assert engine is not None
        os.kill(engine, signal.SIGKILL)
        removed: set[bytes] = set()

        def removed_now() -> bool:
            removed.update(h for e in subscriber.events("BlockRemoved") for h in e[1])
            return set(only_first) <= removed

        subscriber.wait_for(removed_now)
        assert not removed & set(shared_chain), "the other worker still holds the shared prompt's blocks"
        assert subscriber.events("AllBlocksCleared") == [], "never cleared while a worker holds blocks"

        # Prompts that do not fit beside each other: the cache evicts, and says which blocks went.
        story_ids: list[list[int]] = []
        for n in range(5):  # 15 pages each; the worker's cache holds 49
            story = [{"role": "user", "content": " ".join(f"Story {n} part {k} goes on." for k in range(25))}]
            story_ids.append(_render(live, story))
            await _chat(second, story)
            ids = story_ids[-1]
            subscriber.wait_for(lambda ids=ids: len(_stored_chain(subscriber, ids)) == len(ids) // PAGE)
            first_story = _stored_chain(subscriber, story_ids[0])
            assert len(first_story) == len(story_ids[0]) // PAGE
            if removed_now() and set(first_story) <= removed:
                break
        assert set(first_story) <= removed, "the first story's blocks are evicted for a later one"
        assert 3 <= len(story_ids) <= 4, "evicted when the cache is full, not before"

    # Every message: the pod's topic, numbered in order by one publisher.
    topics = {topic for topic, _, _ in subscriber.messages}
    assert len(topics) == 1 and topics.pop().split("@")[0::2] == ["kv", MODEL]
    sequences = [sequence for _, sequence, _ in subscriber.messages]
    assert sequences == list(range(sequences[0], sequences[0] + len(sequences)))


def test_an_events_endpoint_the_pod_cannot_bind_stops_serve_with_the_reason(
    tmp_path: Path, tiny_model_dir: Path
) -> None:
    with socket.socket() as taken:
        taken.bind(("127.0.0.1", 0))
        taken.listen()
        endpoint = f"tcp://127.0.0.1:{taken.getsockname()[1]}"
        with serve_process(tmp_path, tiny_model_dir, workers=1, kv_events_endpoint=endpoint) as live:
            assert live.proc.wait(timeout=60) == 2, "the configuration's exit status"
        lines = [json.loads(line) for line in live.log_lines() if line.startswith("{")]
        (failed,) = [line for line in lines if line.get("event") == "kv_events_start_failed"]
        assert "Address already in use" in failed["error"] and failed["endpoint"] == endpoint
        assert [line for line in lines if line.get("event") == "kv_events_unavailable"]
        assert not [line for line in lines if line.get("event") == "model_loaded"], "no worker started"
