"""The pod's KV-cache event publisher: `python -m qwen_chat.runtime.kv_events STATE_DIR ENDPOINT TOPIC
READY_FD`, started by gunicorn's master when QWEN_CHAT_KV_EVENTS_ENDPOINT is set (`gunicorn_conf.py`),
which waits for the byte it writes to READY_FD once its sockets are bound.

It pulls every engine process's block changes (`engine/block_events.py`) from a socket in the state folder,
keeps which engine holds which block (`pod_blocks.py`), and publishes the pod's events on one ZMQ PUB
socket in vLLM's format, which llm-d's precise prefix-cache scorer subscribes to: each message is three
frames, the topic, a sequence number (8 bytes, big-endian, counting from 0 per publisher) and a msgpack
payload `[timestamp, [event, ...], data_parallel_rank]`.

Every half second it looks for engine processes that ended (a worker's engine restarted or the worker
died) and removes what they alone held. On SIGTERM (the master stopping), or when the master is gone, it
removes every block it announced and exits."""

from __future__ import annotations

import os
import select
import signal
import socket
import subprocess
import sys
import time
from pathlib import Path

import msgspec
import structlog

from qwen_chat.engine import block_events
from qwen_chat.logging_setup import configure_logging
from qwen_chat.runtime.pod_blocks import Event, PodBlocks
from qwen_chat.settings import Settings

log = structlog.get_logger("qwen_chat.runtime.kv_events")  # also when run as __main__

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


class PublisherFailed(RuntimeError):
    pass


# How long the master waits for the publisher to bind its sockets.
_START_SECONDS = 15.0


def start_publisher(settings: Settings, state_dir: Path) -> subprocess.Popen[bytes]:
    """The publisher, as a child of the calling process (gunicorn's master), before any worker starts;
    `PublisherFailed` if it cannot bind its sockets (a taken port, a bad endpoint: it logs why)."""
    read, write = os.pipe()  # it writes one byte there once bound
    arguments = [str(state_dir), settings.kv_events_endpoint, topic(settings), str(write)]
    process = subprocess.Popen(
        [sys.executable, "-m", "qwen_chat.runtime.kv_events", *arguments], pass_fds=(write,)
    )
    os.close(write)
    try:
        ready, _, _ = select.select([read], [], [], _START_SECONDS)
        bound = bool(ready) and os.read(read, 1) == b"1"
    finally:
        os.close(read)
    if not bound:
        stop_publisher(process)
        raise PublisherFailed(f"the KV-event publisher could not bind {settings.kv_events_endpoint}")
    return process


def stop_publisher(process: subprocess.Popen[bytes]) -> None:
    process.terminate()
    try:
        process.wait(timeout=5)
    except subprocess.TimeoutExpired:
        process.kill()


def started_at(pid: int) -> bytes | None:
    """When the process `pid` started (its clock ticks since boot), or None when it has ended (its
    zombie included: a worker that has not reaped its engine yet). Two processes of one pid differ."""
    if not os.path.isdir("/proc/self"):  # no procfs (macOS): whether the pid exists is all there is
        try:
            os.kill(pid, 0)
        except ProcessLookupError:
            return None
        except PermissionError:
            pass
        return b""
    try:
        with open(f"/proc/{pid}/stat", "rb") as stat:
            fields = stat.read().rsplit(b")", 1)[1].split()
    except OSError:
        return None
    return None if fields[0] == b"Z" else fields[19]


class Publisher:
    def __init__(self, pull: str, endpoint: str, topic_name: str) -> None:
        import zmq

        self._context = zmq.Context()
        self._pull = self._context.socket(zmq.PULL)
        self._pub = self._context.socket(zmq.PUB)
        self._pub.setsockopt(zmq.SNDHWM, 100_000)
        self._pub.setsockopt(zmq.LINGER, 1000)  # the last removals get a second to leave
        try:
            self._pull.bind(pull)
            self._pub.bind(endpoint)
        except zmq.ZMQError:
            self.close()
            raise
        self._topic = topic_name.encode()
        self._sequence = 0
        self._blocks = PodBlocks()
        self._started: dict[int, bytes | None] = {}  # engine pid -> its start time
        self._encoder = msgspec.msgpack.Encoder()
        self.stopping = False

    def publish(self, events: list[Event]) -> None:
        if not events:
            return
        payload = self._encoder.encode(EventBatch(time.time(), events))
        self._pub.send_multipart([self._topic, self._sequence.to_bytes(8, "big"), payload])
        self._sequence += 1

    def run(self, parent: int) -> None:
        """Until SIGTERM (`stopping`) or the master is gone; then every announced block is removed."""
        import zmq

        swept = time.monotonic()
        while not self.stopping and os.getppid() == parent:
            if self._pull.poll(int(SWEEP_SECONDS * 1000)):
                try:
                    changes = block_events.decode(self._pull.recv(zmq.NOBLOCK))
                except msgspec.DecodeError as exc:
                    log.warning("kv_events_bad_message", error=str(exc))
                    continue
                if changes.source not in self._started:
                    self._started[changes.source] = started_at(changes.source)
                events: list[Event] = []
                for change in changes.changes:
                    events += self._blocks.apply(changes.source, change)
                self.publish(events)
            if time.monotonic() - swept >= SWEEP_SECONDS:
                swept = time.monotonic()
                self.sweep()
        self.publish(self._blocks.forget_all())

    def sweep(self) -> None:
        for source in sorted(self._blocks.sources):
            now = started_at(source)
            if now is None or now != self._started.get(source):
                self._started.pop(source, None)
                self.publish(self._blocks.forget(source))

    def close(self) -> None:
        self._pull.close(linger=0)
        self._pub.close()
        self._context.term()


def main(argv: list[str]) -> int:
    settings = Settings()
    configure_logging(settings.log_format, settings.log_level, {"process": "kv-events"})
    signal.signal(signal.SIGINT, signal.SIG_IGN)  # a terminal's Ctrl-C is the master's to act on
    state_dir, endpoint, topic_name, ready = Path(argv[1]), argv[2], argv[3], int(argv[4])
    parent = os.getppid()
    try:
        publisher = Publisher(block_events.socket_address(state_dir), endpoint, topic_name)
    except Exception as exc:  # zmq.ZMQError: a taken port, a bad endpoint, a socket path too long
        log.error("kv_events_start_failed", endpoint=endpoint, error=str(exc))
        return 1
    os.write(ready, b"1")
    os.close(ready)

    def stop(signum: int, frame: object) -> None:
        publisher.stopping = True

    signal.signal(signal.SIGTERM, stop)
    log.info("kv_events_publishing", endpoint=endpoint, topic=topic_name)
    try:
        publisher.run(parent)
    finally:
        publisher.close()
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv))
