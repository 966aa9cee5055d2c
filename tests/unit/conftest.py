"""The unit lane reads no QWEN_CHAT_* variable a developer's shell may hold: `Settings()` is the defaults."""

from __future__ import annotations

import os
from collections.abc import Iterator

import pytest

from qwen_chat.settings import get_settings


@pytest.fixture(autouse=True)
def default_settings(monkeypatch: pytest.MonkeyPatch) -> Iterator[None]:
    for name in [name for name in os.environ if name.startswith("QWEN_CHAT_")]:
        monkeypatch.delenv(name)
    get_settings.cache_clear()
    yield
    get_settings.cache_clear()
