"""Fixtures only: the tiny model (built once per session), Secret-like credential folders, live servers.
Helpers live in `tests/support/`. Nothing here imports torch unless a test needs it, so `tests/unit/`
runs in seconds."""

from __future__ import annotations

import contextlib
import os
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import pytest

from qwen_chat.logging_setup import configure_logging
from qwen_chat.settings import Settings
from tests.support.live_server import LiveServer, run_server
from tests.support.secret_volume import KEYS, SecretVolume

# No test may reach a model hub.
os.environ["HF_HUB_OFFLINE"] = "1"
os.environ["TRANSFORMERS_OFFLINE"] = "1"
configure_logging("console", "warning")


def pytest_collection_modifyitems(config: pytest.Config, items: list[pytest.Item]) -> None:
    """Tests marked `gpu` are deselected (not skipped) where torch sees no CUDA device."""
    gpu = [item for item in items if item.get_closest_marker("gpu")]
    if not gpu:
        return
    import torch

    if torch.cuda.is_available():
        return
    config.hook.pytest_deselected(items=gpu)
    items[:] = [item for item in items if not item.get_closest_marker("gpu")]


@pytest.hookimpl(hookwrapper=True)
def pytest_runtest_makereport(item: pytest.Item, call: pytest.CallInfo[None]) -> Any:
    """In CI a skipped test is a failed test: whatever it needs must be installed, not skipped."""
    outcome = yield
    report = outcome.get_result()
    if report.skipped and os.environ.get("CI", "").lower() == "true":
        report.outcome = "failed"
        report.longrepr = f"skipped in CI (CI=true makes this a failure): {report.longrepr}"


@pytest.fixture
def anyio_backend() -> str:
    return "asyncio"


@pytest.fixture(scope="session")
def tiny_model_dir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    from qwen_chat.engine.tiny import make_tiny_model

    return make_tiny_model(tmp_path_factory.mktemp("tiny-model"))


@pytest.fixture(scope="session")
def tiny_qwen_v1_dir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A tiny Qwen v1 checkpoint in the original layout (`model_type: qwen`, qwen.tiktoken)."""
    from qwen_chat.engine.tiny import make_tiny_model

    return make_tiny_model(tmp_path_factory.mktemp("tiny-qwen-v1"), family="qwen")


@pytest.fixture(scope="session")
def tiny_qwen3_dir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    from qwen_chat.engine.tiny import make_tiny_model

    return make_tiny_model(tmp_path_factory.mktemp("tiny-qwen3"), family="qwen3")


@pytest.fixture(scope="session")
def tiny_qwen3_5_dir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """The hybrid family's tiny model, whose template thinks first and writes Qwen3.5's XML tool calls."""
    from qwen_chat.engine.tiny import make_tiny_model

    return make_tiny_model(tmp_path_factory.mktemp("tiny-qwen3_5"), family="qwen3_5")


@pytest.fixture(scope="session")
def conversion_cache(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """Where the tests' Qwen v1 conversions go (never the user's HF_HOME)."""
    return tmp_path_factory.mktemp("converted")


@pytest.fixture
def secret_volume(tmp_path: Path) -> SecretVolume:
    volume = SecretVolume(tmp_path / "credentials")
    volume.write(KEYS)
    return volume


@pytest.fixture
def make_settings(tiny_model_dir: Path, tmp_path: Path, conversion_cache: Path) -> Callable[..., Settings]:
    def make(**overrides: Any) -> Settings:
        if "credentials_dir" not in overrides:
            volume = SecretVolume(tmp_path / f"credentials-{len(list(tmp_path.iterdir()))}")
            volume.write(KEYS)
            overrides["credentials_dir"] = volume.root
        values: dict[str, Any] = {
            "model": str(tiny_model_dir),
            "device": "cpu",
            "max_new_tokens": 512,
            "credentials_reload_seconds": 0.2,
            "conversion_cache": conversion_cache,
            # In-process tests run the core as a thread (no child to start each time); the process layout
            # has its own tests (test_engine_process.py), and every `qwen-chat serve` test uses the default.
            "engine_process": False,
        }
        values.update(overrides)
        return Settings(**values)

    return make


@pytest.fixture
def serve(
    make_settings: Callable[..., Settings],
) -> Callable[..., contextlib.AbstractContextManager[LiveServer]]:
    from qwen_chat.app import create_app

    def start(**overrides: Any) -> contextlib.AbstractContextManager[LiveServer]:
        settings = make_settings(**overrides)
        return run_server(create_app(settings), settings)

    return start


@pytest.fixture
def server(serve: Callable[..., contextlib.AbstractContextManager[LiveServer]]) -> Iterator[LiveServer]:
    with serve() as live:
        yield live
