"""The service one worker runs, typed: what `create_app` builds and every handler receives as `ServiceDep`."""

from __future__ import annotations

import time
from collections import Counter
from dataclasses import dataclass, field
from typing import Annotated

from fastapi import Depends
from starlette.requests import HTTPConnection

from qwen_chat.auth.credentials import CredentialStore
from qwen_chat.chat.admission import Admission
from qwen_chat.chat.rate_limit import RateLimiter
from qwen_chat.engine.api.interface import Engine
from qwen_chat.runtime.drain import Drain
from qwen_chat.runtime.lifecycle import WorkerLifecycle
from qwen_chat.runtime.readiness import WorkerStates
from qwen_chat.runtime.state_dir import StateDir
from qwen_chat.settings import Settings


@dataclass(frozen=True, eq=False)
class Service:
    settings: Settings
    engine: Engine
    credentials: CredentialStore | None  # None: authentication is off
    readiness: WorkerStates
    drain: Drain
    admission: Admission
    lifecycle: WorkerLifecycle = field(default_factory=WorkerLifecycle)
    open_sockets: Counter[str] = field(default_factory=Counter)  # /ws connections by user (ws/router.py)
    started_at: int = field(default_factory=lambda: int(time.time()))

    @classmethod
    def build(cls, settings: Settings, engine: Engine) -> Service:
        credentials = (
            CredentialStore(settings.credentials_dir, settings.credentials_reload_seconds)
            if settings.auth_enabled
            else None
        )
        workers_dir = StateDir(settings.state_dir).workers if settings.state_dir else None
        readiness = WorkerStates(workers_dir, settings.workers)
        drain = Drain(readiness, settings.drain_seconds)
        admission = Admission(settings, engine, RateLimiter(settings), drain)
        return cls(settings, engine, credentials, readiness, drain, admission)


def get_service(connection: HTTPConnection) -> Service:
    """The app's service (for HTTP requests and WebSockets alike)."""
    service = connection.app.state.service
    assert isinstance(service, Service), "the app was not made by create_app"
    return service


ServiceDep = Annotated[Service, Depends(get_service)]
