"""The FastAPI application: routers included in one place, the engine owned by the lifespan."""

from __future__ import annotations

import asyncio
import contextlib
from collections.abc import AsyncIterator

import structlog
from fastapi import FastAPI

from qwen_chat import probes, ws
from qwen_chat.credentials import CredentialStore
from qwen_chat.engine import Engine
from qwen_chat.settings import Settings, get_settings
from qwen_chat.simple_engine import SimpleEngine

log = structlog.get_logger(__name__)


def create_engine(settings: Settings) -> Engine:
    return SimpleEngine(settings)


def create_app(settings: Settings | None = None) -> FastAPI:
    settings = settings or get_settings()

    @contextlib.asynccontextmanager
    async def lifespan(app: FastAPI) -> AsyncIterator[None]:
        engine = app.state.engine
        # Serve probes at once; the model loads in the background and /readyz reports when it is warm.
        loading = asyncio.create_task(_load(engine))
        try:
            yield
        finally:
            loading.cancel()
            await asyncio.gather(loading, return_exceptions=True)
            await engine.close()

    app = FastAPI(title="qwen-chat", version="0.1.0", lifespan=lifespan)
    app.state.settings = settings
    app.state.engine = create_engine(settings)
    app.state.credentials = (
        CredentialStore(settings.credentials_dir, settings.credentials_reload_seconds)
        if settings.auth_enabled
        else None
    )
    app.state.draining = False
    if not settings.auth_enabled:
        log.warning("auth_disabled", detail="QWEN_CHAT_AUTH_ENABLED=false: anyone who can connect may chat")
    app.include_router(probes.router)
    app.include_router(ws.router)
    return app


async def _load(engine: Engine) -> None:
    try:
        await engine.start()
    except Exception as exc:
        log.error("model_load_failed", error=f"{type(exc).__name__}: {exc}")
