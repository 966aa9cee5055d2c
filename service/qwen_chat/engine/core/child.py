"""The engine process: `python -m qwen_chat.engine.core.child COMMANDS_FD EVENTS_FD`, started by
`ProcessEngine` with the worker's settings as its first command frame.

Two threads of ours beside the decoding loop, which holds this process's GIL for little but decoding:
- the main thread loads the model, starts the core (which warms up), says `Ready`, then waits;
- the command thread reads `Submit`/`Cancel`/`Shutdown` and hands them to the core. End-of-file means the
  worker is gone (it exited, or was killed): the process exits at once, so no orphan holds device memory;
- the core's own threads write its events, one frame per step (`_Outbox`).
SIGINT and SIGTERM are the worker's to act on (a terminal's Ctrl-C reaches the whole process group): this
process stops when the worker says so or disappears.
"""

from __future__ import annotations

import os
import signal
import sys
import threading
from multiprocessing.connection import Connection
from typing import TYPE_CHECKING

import structlog

from qwen_chat.engine.wire import (
    Cancel,
    Event,
    LoadFailed,
    Ready,
    Row,
    RowState,
    Shutdown,
    Step,
    Submit,
    decode_command,
    encode,
)
from qwen_chat.logging_setup import configure_logging
from qwen_chat.settings import Settings

if TYPE_CHECKING:
    from qwen_chat.engine.core.base import EngineCore

log = structlog.get_logger("qwen_chat.engine.process")  # the name its lines had before the move


class _Outbox:
    """Events to the worker, written by the thread that has them (the decoding loop, once per step): a
    frame is a few hundred bytes and the worker's reader drains the pipe at once, so a write does not
    wait, and no hand-over to a writer thread waits for the GIL either."""

    def __init__(self, events: Connection) -> None:
        self._events = events
        self._lock = threading.Lock()  # the simple core's threads write too

    def send(self, event: Event) -> None:
        frame = encode(event)
        try:
            with self._lock:
                self._events.send_bytes(frame)
        except OSError:  # the worker is gone
            os._exit(0)


class _Engine:
    def __init__(self, settings: Settings, outbox: _Outbox) -> None:
        self._settings = settings
        self._outbox = outbox
        self._core: EngineCore | None = None
        self._stop = threading.Event()

    def run(self) -> int:
        from qwen_chat.engine.core import make_core  # torch and transformers: after the logging is set up
        from qwen_chat.engine.model.loader import load_model

        try:
            loaded = load_model(self._settings)
            core = make_core(self._settings, loaded, self._outbox.send)
            core.start()
        except Exception as exc:
            # The worker logs it as `model_load_failed`, with this reason, as it does any load failure.
            reason = f"{type(exc).__name__}: {exc}"
            log.error("engine_load_failed", error=reason)
            self._outbox.send(LoadFailed(reason))
            self._stop.wait(30)  # the worker reads it, then closes our commands
            return 1
        self._core = core
        self._outbox.send(Ready(core.facts()))
        while not self._stop.wait(1.0):
            if not core.healthy():
                # A decoding loop that died (a device error) may have left the device unusable: a fresh
                # process is the only sure recovery, and the worker starts one when this one exits.
                log.error("engine_core_failed", action="exiting, the worker starts a fresh engine process")
                return 70
        core.stop()
        return 0

    def read_commands(self, commands: Connection) -> None:
        while True:
            try:
                command = decode_command(commands.recv_bytes())
            except (EOFError, OSError):
                if not self._stop.is_set():  # no Shutdown first: the worker died
                    os._exit(0)
                return
            core = self._core
            if isinstance(command, Shutdown):
                if core is None:  # still loading: nothing to stop gracefully
                    os._exit(0)
                self._stop.set()
                return
            if core is None:
                continue  # nothing is sent before Ready
            if isinstance(command, Submit):
                try:
                    core.submit(command)
                except Exception as exc:
                    log.exception("submit_failed", request_id=command.request_id)
                    self._outbox.send(Step([Row(command.request_id, [], RowState.FAILED, str(exc))]))
            elif isinstance(command, Cancel):
                core.cancel(command.request_id)


def main(argv: list[str]) -> int:
    signal.signal(signal.SIGINT, signal.SIG_IGN)
    signal.signal(signal.SIGTERM, signal.SIG_IGN)
    commands = Connection(int(argv[1]), writable=False)
    events = Connection(int(argv[2]), readable=False)
    try:
        settings = Settings.model_validate_json(commands.recv_bytes())
    except EOFError:
        return 0
    configure_logging(
        settings.log_format, settings.log_level, {"process": "engine", "worker_pid": os.getppid()}
    )
    engine = _Engine(settings, _Outbox(events))
    threading.Thread(
        target=engine.read_commands, args=(commands,), name="engine-commands", daemon=True
    ).start()
    code = engine.run()
    # Daemon threads and the manager's would otherwise be joined; the model's memory goes with the process.
    sys.stdout.flush()
    sys.stderr.flush()
    os._exit(code)


if __name__ == "__main__":
    sys.exit(main(sys.argv))
