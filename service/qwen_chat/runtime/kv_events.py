"""The pod's KV-cache event publisher: `python -m qwen_chat.runtime.kv_events STATE_DIR ENDPOINT TOPIC`,
started by gunicorn's master when QWEN_CHAT_KV_EVENTS_ENDPOINT is set (`gunicorn_conf.py`).

It pulls every engine process's block changes (`engine/block_events.py`) from a socket in the state folder,
keeps which engine holds which block (`pod_blocks.py`), and publishes the pod's events on one ZMQ PUB
socket in vLLM's format, which llm-d's precise prefix-cache scorer subscribes to: each message is three
frames, the topic, a sequence number (8 bytes, big-endian, counting from 0 per publisher) and a msgpack
payload `[timestamp, [event, ...], data_parallel_rank]`.

Every half second it looks for engine processes that ended (a worker's engine restarted or the worker
died) and removes what they alone held. It exits when the master that started it is gone."""

from __future__ import annotations

import os
import socket
import subprocess
import sys
import time
from pathlib import Path

import msgspec
import structlog

from qwen_chat.engine import block_events
from qwen_chat.logging_setup import configure_logging
from qwen_chat.runtime.pod_blocks import AllBlocksCleared, Event, PodBlocks
from qwen_chat.settings import Settings

log = structlog.get_logger(__name__)

# How often ended engine processes are looked for.
SWEEP_SECONDS = 0.5


class EventBatch(msgspec.Struct, array_like=True, gc=False):
    ts: float
    events: list[Event]
    data_parallel_rank: int | None = None


def topic(settings: Settings) -> str:
    """KV_EVENTS_TOPIC, else llm-d's form `kv@<pod>@<model>`: the pod as `IP:port` where the chart gives
    POD_IP (what the router names it by when the pod's events come to a socket of the router's own), else
    the host name. The model is the served name, which the router matches with each request's."""
    if settings.kv_events_topic:
        return settings.kv_events_topic
    pod_ip = os.environ.get("POD_IP")
    pod = f"{pod_ip}:{settings.port}" if pod_ip else socket.gethostname()
    return f"kv@{pod}@{settings.model_name}"


def start_publisher(settings: Settings, state_dir: Path) -> subprocess.Popen[bytes]:
    """The publisher, as a child of the calling process (gunicorn's master), before any worker starts."""
    arguments = [str(state_dir), settings.kv_events_endpoint, topic(settings)]
    return subprocess.Popen([sys.executable, "-m", "qwen_chat.runtime.kv_events", *arguments])


def stop_publisher(process: subprocess.Popen[bytes]) -> None:
    process.terminate()
    try:
        process.wait(timeout=5)
    except subprocess.TimeoutExpired:
        process.kill()


def process_ended(pid: int) -> bool:
    """No such process, or only its zombie (a worker that has not reaped its engine yet)."""
    try:
        with open(f"/proc/{pid}/stat", "rb") as stat:
            return stat.read().rsplit(b")", 1)[1].split()[0] == b"Z"
    except FileNotFoundError:
        return True
    except OSError:
        try:
            os.kill(pid, 0)
        except ProcessLookupError:
            return True
        return False


class Publisher:
    def __init__(self, pull: str, endpoint: str, topic_name: str) -> None:
        import zmq

        self._context = zmq.Context()
        self._pull = self._context.socket(zmq.PULL)
        self._pull.bind(pull)
        self._pub = self._context.socket(zmq.PUB)
        self._pub.setsockopt(zmq.SNDHWM, 100_000)
        self._pub.bind(endpoint)
        self._topic = topic_name.encode()
        self._sequence = 0
        self._blocks = PodBlocks()
        self._encoder = msgspec.msgpack.Encoder()

    def publish(self, events: list[Event]) -> None:
        if not events:
            return
        payload = self._encoder.encode(EventBatch(time.time(), events))
        self._pub.send_multipart([self._topic, self._sequence.to_bytes(8, "big"), payload])
        self._sequence += 1

    def run(self, parent: int) -> None:
        import zmq

        # Whatever an earlier publisher of this pod announced is gone with it.
        self.publish([AllBlocksCleared()])
        swept = time.monotonic()
        while os.getppid() == parent:
            if self._pull.poll(int(SWEEP_SECONDS * 1000)):
                try:
                    changes = block_events.decode(self._pull.recv(zmq.NOBLOCK))
                except msgspec.DecodeError as exc:
                    log.warning("kv_events_bad_message", error=str(exc))
                    continue
                events: list[Event] = []
                for change in changes.changes:
                    events += self._blocks.apply(changes.source, change)
                self.publish(events)
            if time.monotonic() - swept >= SWEEP_SECONDS:
                swept = time.monotonic()
                self.sweep()

    def sweep(self) -> None:
        for source in sorted(self._blocks.sources):
            if process_ended(source):
                self.publish(self._blocks.forget(source))

    def close(self) -> None:
        self._pull.close(linger=0)
        self._pub.close(linger=0)
        self._context.term()


def main(argv: list[str]) -> int:
    settings = Settings()
    configure_logging(settings.log_format, settings.log_level, {"process": "kv-events"})
    state_dir, endpoint, topic_name = Path(argv[1]), argv[2], argv[3]
    parent = os.getppid()
    try:
        publisher = Publisher(block_events.socket_address(state_dir), endpoint, topic_name)
    except Exception as exc:  # zmq.ZMQError: a taken port, a bad endpoint
        log.error("kv_events_start_failed", endpoint=endpoint, error=str(exc))
        return 1
    log.info("kv_events_publishing", endpoint=endpoint, topic=topic_name)
    try:
        publisher.run(parent)
    finally:
        publisher.close()
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv))
