"""Faults a running service meets: a model that cannot load, a credentials folder that is missing, unreadable,
empty or filled late, and a key revoked while its sockets are open (with the default reload interval).

A worker SIGKILLed mid-stream and SIGTERM's drain are tested in test_process_model.py
(test_sigkill_of_a_worker_mid_stream, test_sigterm_drains_in_flight_replies_then_exits_zero). Figures:
test-output/reliability/faults-*.json.
"""

from __future__ import annotations

import asyncio
import json
import os
import shutil
import signal
import time
from contextlib import AsyncExitStack
from pathlib import Path

import httpx
import pytest
from websockets.asyncio.client import ClientConnection
from websockets.exceptions import ConnectionClosed, InvalidStatus

from qwen_chat.auth.credentials import CredentialStore, check_directory
from tests.support.reliability_tools import Figures, error_log_lines, leaked_secrets, secrets_of
from tests.support.secret_volume import KEYS, SecretVolume
from tests.support.serve_process import ServeProcess, open_on_every_worker, serve_process
from tests.support.wsclient import chat, open_socket, receive

pytestmark = pytest.mark.anyio

# gunicorn's Arbiter.WORKER_BOOT_ERROR: the master halts ("Worker failed to boot.") and exits with it.
WORKER_BOOT_ERROR = 3
# gunicorn_conf.CONFIG_ERROR, the same status as `qwen-chat serve` with invalid settings.
CONFIG_ERROR = 2
EXIT_DEADLINE = 90.0  # seconds; the exit itself takes a few (most of it importing torch in each worker)
REVOCATION_DEADLINE = 60.0  # the contract: a rotated-away key stops working within 60 s


def records(server: ServeProcess) -> list[dict[str, object]]:
    """The JSON log records (libraries may add plain lines; those are not parsed)."""
    parsed = []
    for line in server.log_lines():
        try:
            record = json.loads(line)
        except ValueError:
            continue
        if isinstance(record, dict):
            parsed.append(record)
    return parsed


def wait_exit(server: ServeProcess, timeout: float) -> tuple[int, float]:
    started = time.monotonic()
    code = server.proc.wait(timeout=timeout)
    return code, time.monotonic() - started


def broken_model(kind: str, tiny_model_dir: Path, tmp_path: Path) -> tuple[Path, str]:
    """A model folder that cannot load, and what its `model_load_failed` line must say."""
    if kind == "missing":
        return tmp_path / "no-such-model", "the model path does not exist"
    if kind == "unsupported-family":
        llama = tmp_path / "llama-model"
        shutil.copytree(tiny_model_dir, llama)
        config = json.loads((llama / "config.json").read_text())
        config.update(model_type="llama", architectures=["LlamaForCausalLM"])
        (llama / "config.json").write_text(json.dumps(config))
        return llama, "model_type 'llama' (LlamaForCausalLM) is not served"
    copy = tmp_path / "corrupt-model"
    shutil.copytree(tiny_model_dir, copy)
    weights = copy / "model.safetensors"
    os.truncate(weights, weights.stat().st_size // 2)  # a download or copy cut short
    return copy, "SafetensorError"


@pytest.mark.parametrize("kind", ["missing", "truncated-weights", "unsupported-family"])
def test_a_model_that_cannot_load_stops_the_service_with_the_reason(
    kind: str, tmp_path: Path, tiny_model_dir: Path
) -> None:
    model, reason = broken_model(kind, tiny_model_dir, tmp_path)
    figures = Figures(f"faults-model-{kind}")
    with serve_process(tmp_path, model, workers=2) as live:
        code, seconds = wait_exit(live, EXIT_DEADLINE)
    figures.set(fault=kind, workers=2, exit_code=code, exit_seconds=round(seconds, 1))
    logged = records(live)
    failures = [r for r in logged if r.get("event") == "model_load_failed"]
    figures.set(model_load_failed_lines=len(failures))
    figures.write()

    assert code == WORKER_BOOT_ERROR, live.log.read_text()[-3000:]
    assert failures, "the reason must be logged"
    assert all(reason in str(r["error"]) for r in failures), failures
    # One worker stops the service; the others were loading the same model and are stopped by the master.
    assert [r["action"] for r in failures].count("stopping the service") == 1, failures
    events = [str(r.get("event")) for r in logged]
    assert "Reason: Worker failed to boot." in events
    # Not a crash loop: the two workers booted once each and none was replaced.
    assert sum(e.startswith("Booting worker") for e in events) == 2, events
    assert "Traceback" not in live.log.read_text()


def test_an_engine_that_keeps_dying_stops_the_service_for_kubernetes_to_back_off(
    tmp_path: Path, tiny_model_dir: Path
) -> None:
    # ENGINE_RESTART_LIMIT=0: the first death of the engine process is one too many.
    with serve_process(tmp_path, tiny_model_dir, workers=1, engine_restart_limit="0") as live:
        live.wait_ready()
        (worker,) = live.workers()
        engine = live.engine_of(worker)
        assert engine is not None
        os.kill(engine, signal.SIGKILL)
        code, _ = wait_exit(live, EXIT_DEADLINE)
    assert code == WORKER_BOOT_ERROR, live.log.read_text()[-3000:]
    logged = records(live)
    died = [r for r in logged if r.get("event") == "engine_process_died"]
    assert died and "SIGKILL" in str(died[0]["reason"]), died
    failed = [r for r in logged if r.get("event") == "engine_failed" and r.get("action")]
    assert failed and failed[0]["action"] == "stopping the service", failed
    assert "ENGINE_RESTART_LIMIT=0" in str(failed[0]["error"])


@pytest.mark.parametrize("kind", ["missing", "not-a-directory", "symlink-loop"])
def test_an_unusable_credentials_dir_is_a_startup_error(
    kind: str, tmp_path: Path, tiny_model_dir: Path
) -> None:
    """Missing, a file, or unreadable even by root (a symlink loop: ELOOP) - the service does not start."""
    path = tmp_path / f"credentials-{kind}"
    if kind == "not-a-directory":
        path.write_text("alice-key\n")
    elif kind == "symlink-loop":
        path.symlink_to(path.name)
    figures = Figures(f"faults-credentials-{kind}")
    with serve_process(tmp_path, tiny_model_dir, workers=2, credentials_dir=str(path)) as live:
        code, seconds = wait_exit(live, EXIT_DEADLINE)
    figures.set(fault=f"CREDENTIALS_DIR {kind}", exit_code=code, exit_seconds=round(seconds, 1))
    figures.write()
    assert code == CONFIG_ERROR, live.log.read_text()[-3000:]
    logged = records(live)
    errors = [r for r in logged if r.get("event") == "credentials_dir_unusable"]
    assert len(errors) == 1 and errors[0]["directory"] == str(path), logged
    expected = {
        "missing": "does not exist",
        "not-a-directory": "not a directory",
        "symlink-loop": "cannot be read",
    }
    assert expected[kind] in str(errors[0]["error"])
    # Before any worker: no model loaded, nothing to clean up, no traceback.
    assert not any(str(r.get("event")).startswith("Booting worker") for r in logged)
    assert "Traceback" not in live.log.read_text()


def test_unreadable_credentials_dir_is_reported_and_refuses_every_key(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Permission denied, as a non-root pod meets it. Root reads anything, so there the denial is injected
    into os.listdir (the call both the startup check and the store make); elsewhere it is a real chmod 000."""
    volume = SecretVolume(tmp_path / "credentials")
    volume.write(KEYS)
    store = CredentialStore(volume.root, reload_seconds=3600)
    assert store.authenticate(KEYS["alice"]) == "alice"
    if os.geteuid() == 0:
        real_listdir = os.listdir

        def denied(path: object = ".") -> list[str]:
            if Path(str(path)) == volume.root:
                raise PermissionError(13, "Permission denied", str(path))
            return real_listdir(path)  # type: ignore[arg-type]

        monkeypatch.setattr(os, "listdir", denied)
    else:
        volume.root.chmod(0)
    try:
        assert check_directory(volume.root) == "the directory cannot be read (permission denied)"
        store.reload()
        assert store.users == [] and store.authenticate(KEYS["alice"]) is None, "fail closed"
    finally:
        volume.root.chmod(0o755)


async def test_empty_credentials_then_keys_then_revocation_with_the_default_reload(
    tmp_path: Path, tiny_model_dir: Path
) -> None:
    """An empty Secret (populated late): the service starts, refuses every key with 401 and says why;
    keys that appear later work. Then a key revoked while its sockets are open on both workers: those
    sockets close with 1008 within 60 s while another user's sockets keep chatting. All with the
    default CREDENTIALS_RELOAD_SECONDS (10 s)."""
    figures = Figures("faults-credentials-empty-then-revoked")
    volume = SecretVolume(tmp_path / "late-secret")
    with serve_process(
        tmp_path, tiny_model_dir, workers=2, credentials_dir=str(volume.root), max_new_tokens="8"
    ) as live:
        live.wait_ready()
        assert any(r.get("event") == "credentials_none" for r in records(live)), "a warning says why"
        with pytest.raises(InvalidStatus) as refused:
            async with open_socket(live.ws, user="alice"):
                pass
        assert refused.value.response.status_code == 401
        http = httpx.get(live.http + "/v1/models", headers={"Authorization": f"Bearer {KEYS['alice']}"})
        assert http.status_code == 401 and KEYS["alice"] not in http.text

        volume.write(KEYS)
        written = time.monotonic()
        async with AsyncExitStack() as stack:
            # Each worker holds its own store: wait until both take alice's key (the kernel spreads the
            # sockets), then keep those sockets - one per worker - open for the revocation.
            while True:
                try:
                    held = await open_on_every_worker(stack, live)
                    break
                except InvalidStatus as refused_late:
                    assert refused_late.response.status_code == 401
                    assert time.monotonic() - written < REVOCATION_DEADLINE, "keys that appear must work"
                    await asyncio.sleep(0.5)
            figures.set(keys_usable_on_every_worker_after_seconds=round(time.monotonic() - written, 1))
            doomed = [ws for sockets in held.values() for ws in sockets]
            for ws in doomed:
                assert (await chat(ws, "hi", params={"max_new_tokens": 2}))[-1]["type"] == "done"
            # bob's sockets on both workers too: they must be untouched by alice's revocation.
            survivors: list[ClientConnection] = []
            while len({live.worker_of(ws.local_address[1]) for ws in survivors}) < 2:
                assert len(survivors) < 40, "the kernel never gave the second worker a socket"
                survivors.append(await stack.enter_async_context(open_socket(live.ws, user="bob")))
            volume.write({"bob": KEYS["bob"]})
            revoked = time.monotonic()

            async def closed_code(ws: ClientConnection) -> int | None:
                with pytest.raises(ConnectionClosed) as closed:
                    await receive(ws, timeout=REVOCATION_DEADLINE)
                return closed.value.rcvd.code if closed.value.rcvd else None

            codes = await asyncio.gather(*(closed_code(ws) for ws in doomed))
            closed_after = time.monotonic() - revoked
            for ws in survivors:
                assert (await chat(ws, "still here", params={"max_new_tokens": 2}))[-1]["type"] == "done"
        figures.set(
            reload_seconds=10,
            revoked_sockets=len(doomed),
            workers=2,
            revoked_closed_after_seconds=round(closed_after, 1),
            other_users_sockets_still_chatting=len(survivors),
        )
        with pytest.raises(InvalidStatus):
            async with open_socket(live.ws, user="alice"):
                pass
        metrics = live.metrics_text()
    figures.write()
    assert codes == [1008] * len(doomed)
    assert closed_after < REVOCATION_DEADLINE
    log = live.log.read_text()
    assert not error_log_lines(log), error_log_lines(log)[:5]
    assert not leaked_secrets({"log": log, "metrics": metrics}, secrets_of())
