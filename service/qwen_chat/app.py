"""The composition root: `create_app` builds the typed `Service`, includes every router in one place, and
owns the engine through the lifespan (the model loads in the background; probes answer from the start)."""

from __future__ import annotations

import asyncio
import contextlib
from collections.abc import AsyncIterator
from pathlib import Path

import structlog
from fastapi import FastAPI
from fastapi.exceptions import RequestValidationError
from starlette.exceptions import HTTPException

from qwen_chat import metrics, tracing
from qwen_chat.engine.api.interface import Engine, EngineError, EngineState
from qwen_chat.engine.model.families import is_local
from qwen_chat.errors import Refusal
from qwen_chat.http import (
    errors,
    openai_api,
    openai_chat,
    openai_completions,
    openai_responses,
    page,
    probes,
    render_api,
    seed_api,
    tokenizer_api,
)
from qwen_chat.service import Service
from qwen_chat.settings import Settings, get_settings
from qwen_chat.ws import router as ws

log = structlog.get_logger(__name__)


def create_engine(settings: Settings) -> Engine:
    """ENGINE picks the core (batch or simple); ENGINE_PROCESS where it runs (a child process or a thread)."""
    if settings.engine_process:
        from qwen_chat.engine.api.process import ProcessEngine

        return ProcessEngine(settings)
    from qwen_chat.engine.api.in_thread import ThreadEngine

    return ThreadEngine(settings)


def create_app(settings: Settings | None = None, engine: Engine | None = None) -> FastAPI:
    """The app for one worker; `engine` replaces the one QWEN_CHAT_ENGINE selects."""
    settings = settings or get_settings()
    service = Service.build(settings, engine or create_engine(settings))

    @contextlib.asynccontextmanager
    async def lifespan(_app: FastAPI) -> AsyncIterator[None]:
        service.readiness.publish("loading")
        metrics.publish_zeros(settings.model_name)
        service.lifecycle.offer_drain(service.drain.run)
        # Serve probes at once; the model loads in the background and /readyz reports when it is warm.
        loading = asyncio.create_task(_load(service))
        try:
            yield
        finally:
            service.lifecycle.offer_drain(None)
            loading.cancel()
            await asyncio.gather(loading, return_exceptions=True)
            metrics.MODEL_LOADED.labels(settings.model_name).set(0)
            try:
                await service.engine.close()
            finally:
                await asyncio.to_thread(tracing.shutdown)  # the last replies' spans leave with the worker

    app = FastAPI(title="qwen-chat", version="0.1.0", lifespan=lifespan)
    app.state.service = service
    # What a process runtime reads off the app (runtime/lifecycle.py), without importing it.
    app.state.lifecycle = service.lifecycle
    if not settings.auth_enabled:
        log.warning("auth_disabled", detail="QWEN_CHAT_AUTH_ENABLED=false: anyone who can connect may chat")
    app.include_router(probes.router)
    app.include_router(ws.router)
    app.include_router(page.router)
    app.include_router(openai_api.router)
    app.include_router(openai_chat.router)
    app.include_router(openai_completions.router)
    app.include_router(openai_responses.router)
    app.include_router(seed_api.router)
    app.include_router(tokenizer_api.router)
    app.include_router(render_api.router)
    app.mount("/static", page.static_files, name="static")
    app.add_exception_handler(Refusal, errors.on_refusal)
    app.add_exception_handler(EngineError, errors.on_engine_error)
    app.add_exception_handler(RequestValidationError, errors.on_validation_error)
    app.add_exception_handler(HTTPException, errors.on_http_error)
    app.add_middleware(page.SecurityHeaders)
    tracing.configure(app, settings.otlp_headers_file)  # when OTEL_EXPORTER_OTLP_ENDPOINT is set
    return app


async def _load(service: Service) -> None:
    settings = service.settings
    try:
        await service.engine.start()
    except Exception as exc:
        # Under gunicorn the worker then exits 3 and the master stops the service (see runtime/worker.py): a
        # model that cannot load will not load on a retry either. Elsewhere /readyz stays 503 `failed`.
        service.readiness.publish("failed")
        reason = f"{type(exc).__name__}: {exc}"
        if is_local(settings.model) and not await asyncio.to_thread(
            lambda: Path(settings.model).expanduser().exists()
        ):
            # transformers would call it an invalid hub repo id; say what is wrong in the operator's terms.
            reason = f"the model path does not exist ({reason})"
        exiting = service.lifecycle.report_load_failed()  # no await from here on: logged before shutdown
        log.error(
            "model_load_failed",
            model=settings.model,
            error=reason,
            action="stopping the service" if exiting else "readyz reports failed",
        )
        return
    metrics.MODEL_LOAD_SECONDS.labels(settings.model_name).set(service.engine.stats.load_seconds or 0.0)
    metrics.MODEL_LOADED.labels(settings.model_name).set(1)
    service.readiness.publish("ready")
    service.engine.watch(lambda state, reason: _on_engine_state(service, state, reason))


def _on_engine_state(service: Service, state: EngineState, reason: str) -> None:
    """A started engine restarts its core (LOADING), is back (READY) or gave up (FAILED)."""
    model = service.settings.model_name
    metrics.MODEL_LOADED.labels(model).set(1 if state is EngineState.READY else 0)
    if service.drain.draining:
        return  # /readyz stays `draining`
    if state is EngineState.READY:
        service.readiness.publish("ready")
    elif state is EngineState.LOADING:
        service.readiness.publish("loading", reason)
    elif state is EngineState.FAILED:
        service.readiness.publish("failed", reason)
        exiting = service.lifecycle.report_load_failed()
        log.error(
            "engine_failed",
            error=reason,
            action="stopping the service" if exiting else "readyz reports failed",
        )
