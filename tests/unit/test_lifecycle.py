"""How the app and the gunicorn worker talk: the drain on SIGTERM and a model that cannot load, through
the app's `WorkerLifecycle`, with no module globals; the STATE_DIR layout both sides use."""

from __future__ import annotations

import asyncio
import signal
from collections.abc import Iterator
from pathlib import Path

import pytest
from uvicorn.config import Config

from qwen_chat.runtime.lifecycle import WorkerLifecycle
from qwen_chat.runtime.state_dir import StateDir
from qwen_chat.runtime.worker import DrainingServer
from qwen_chat.settings import get_settings


@pytest.fixture
def state_dir(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Iterator[StateDir]:
    monkeypatch.setenv("QWEN_CHAT_STATE_DIR", str(tmp_path))
    get_settings.cache_clear()
    yield StateDir(tmp_path)
    get_settings.cache_clear()


def test_the_state_dir_layout() -> None:
    layout = StateDir(Path("/state"))
    assert [layout.workers, layout.metrics, layout.rate_limit_db, layout.boot_failed] == [
        Path("/state/workers"),
        Path("/state/metrics"),
        Path("/state/rate-limit.sqlite"),
        Path("/state/boot-failed"),
    ]


def test_a_failed_load_in_an_app_nothing_hosts_does_not_stop_the_process() -> None:
    lifecycle = WorkerLifecycle()
    assert lifecycle.report_load_failed() is False  # app.py then logs "readyz reports failed"
    assert WorkerLifecycle.of(object()) is None  # not an app made by create_app: nothing to host


def test_the_first_worker_to_fail_its_load_exits_and_the_others_leave_it_to_the_master(
    state_dir: StateDir,
) -> None:
    first, second = (DrainingServer(Config(app=None), WorkerLifecycle()) for _ in range(2))
    assert first.stop_after_failed_load() is True
    assert first.load_failed and first.should_exit and state_dir.boot_failed.exists()
    assert second.stop_after_failed_load() is False  # the marker is taken: the master stops this one
    assert not second.load_failed and not second.should_exit
    assert first.stop_after_failed_load() is False  # already stopping


def test_a_hosted_app_reports_its_failed_load_to_the_worker(state_dir: StateDir) -> None:
    lifecycle = WorkerLifecycle()
    server = DrainingServer(Config(app=None), lifecycle)
    lifecycle.host(on_load_failed=server.stop_after_failed_load)
    assert lifecycle.report_load_failed() is True and server.load_failed


def test_sigterm_runs_the_offered_drain_before_the_worker_exits() -> None:
    async def scenario() -> list[str]:
        events: list[str] = []
        lifecycle = WorkerLifecycle()
        server = DrainingServer(Config(app=None), lifecycle)

        async def drain() -> None:
            events.append(f"drain started, exiting={server.should_exit}")
            await asyncio.sleep(0.05)
            events.append("drain finished")

        lifecycle.offer_drain(drain)
        server.handle_exit(signal.SIGTERM, None)
        for _ in range(200):
            if server.should_exit:
                events.append("exit")
                break
            await asyncio.sleep(0.01)
        return events

    assert asyncio.run(scenario()) == ["drain started, exiting=False", "drain finished", "exit"]


def test_without_an_offered_drain_sigterm_exits_at_once() -> None:
    server = DrainingServer(Config(app=None), WorkerLifecycle())
    server.handle_exit(signal.SIGTERM, None)
    assert server.should_exit
    interrupted = DrainingServer(Config(app=None), None)
    interrupted.handle_exit(signal.SIGINT, None)
    assert interrupted.should_exit
