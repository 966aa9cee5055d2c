"""The FastAPI application: routers included in one place, the engine owned by the lifespan."""

from __future__ import annotations

import asyncio
import contextlib
import time
from collections.abc import AsyncIterator
from pathlib import Path

import structlog
from fastapi import FastAPI
from fastapi.exceptions import RequestValidationError
from starlette.exceptions import HTTPException

from qwen_chat import drain, http_common, metrics, openai_api, probes, simple_api, web, ws
from qwen_chat.batch_engine import ContinuousBatchEngine
from qwen_chat.chat_service import ChatRefused
from qwen_chat.credentials import CredentialStore
from qwen_chat.drain import Drain
from qwen_chat.engine import Engine
from qwen_chat.rate_limit import RateLimiter
from qwen_chat.readiness import WorkerStates
from qwen_chat.settings import Settings, get_settings
from qwen_chat.simple_engine import SimpleEngine

log = structlog.get_logger(__name__)


def create_engine(settings: Settings) -> Engine:
    if settings.engine == "simple":
        return SimpleEngine(settings)
    return ContinuousBatchEngine(settings)


def create_app(settings: Settings | None = None) -> FastAPI:
    settings = settings or get_settings()

    @contextlib.asynccontextmanager
    async def lifespan(app: FastAPI) -> AsyncIterator[None]:
        app.state.states.publish("loading")
        metrics.publish_zeros(settings.model_name)
        drain.register(app.state.drain.run)
        # Serve probes at once; the model loads in the background and /readyz reports when it is warm.
        loading = asyncio.create_task(_load(app.state.engine, app.state.states, settings))
        try:
            yield
        finally:
            drain.register(None)
            loading.cancel()
            await asyncio.gather(loading, return_exceptions=True)
            metrics.MODEL_LOADED.labels(settings.model_name).set(0)
            await app.state.engine.close()

    app = FastAPI(title="qwen-chat", version="0.1.0", lifespan=lifespan)
    app.state.settings = settings
    app.state.started_at = int(time.time())
    app.state.engine = create_engine(settings)
    app.state.credentials = (
        CredentialStore(settings.credentials_dir, settings.credentials_reload_seconds)
        if settings.auth_enabled
        else None
    )
    worker_dir = settings.state_dir / "workers" if settings.state_dir else None
    app.state.states = WorkerStates(worker_dir, settings.workers)
    app.state.drain = Drain(app.state.states, settings.drain_seconds)
    app.state.rate_limiter = RateLimiter(settings)
    if not settings.auth_enabled:
        log.warning("auth_disabled", detail="QWEN_CHAT_AUTH_ENABLED=false: anyone who can connect may chat")
    app.include_router(probes.router)
    app.include_router(ws.router)
    app.include_router(web.router)
    app.include_router(openai_api.router)
    app.include_router(simple_api.router)
    app.mount("/static", web.static_files, name="static")
    app.add_exception_handler(http_common.HTTPAuthError, http_common.on_auth_error)
    app.add_exception_handler(ChatRefused, http_common.on_chat_refused)
    app.add_exception_handler(RequestValidationError, http_common.on_validation_error)
    app.add_exception_handler(HTTPException, http_common.on_http_error)
    app.add_middleware(web.SecurityHeaders)
    return app


async def _load(engine: Engine, states: WorkerStates, settings: Settings) -> None:
    try:
        await engine.start()
    except Exception as exc:
        # Under gunicorn the worker then exits 3 and the master stops the service (see worker.py): a model
        # that cannot load will not load on a retry either. Elsewhere /readyz stays 503 `failed`.
        from qwen_chat.worker import exit_after_failed_load  # gunicorn's, imported only where it runs

        states.publish("failed")
        reason = f"{type(exc).__name__}: {exc}"
        local = settings.model.startswith((".", "/", "~"))
        if local and not await asyncio.to_thread(lambda: Path(settings.model).expanduser().exists()):
            # transformers would call it an invalid hub repo id; say what is wrong in the operator's terms.
            reason = f"the model path does not exist ({reason})"
        exiting = exit_after_failed_load()  # no await from here on: the line is logged before shutdown
        log.error(
            "model_load_failed",
            model=settings.model,
            error=reason,
            action="stopping the service" if exiting else "readyz reports failed",
        )
        return
    metrics.MODEL_LOAD_SECONDS.labels(settings.model_name).set(engine.stats.load_seconds or 0.0)
    metrics.MODEL_LOADED.labels(settings.model_name).set(1)
    states.publish("ready")
