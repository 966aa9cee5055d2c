"""Kubernetes probes: /livez while the event loop answers, /readyz once the model is loaded and warm."""

from __future__ import annotations

from fastapi import APIRouter, Request
from fastapi.responses import JSONResponse

from qwen_chat.engine import EngineState

router = APIRouter(tags=["probes"])


@router.get("/livez")
async def livez() -> dict[str, str]:
    return {"status": "ok"}


@router.get("/readyz")
async def readyz(request: Request) -> JSONResponse:
    state = request.app.state.engine.state
    ready = state is EngineState.READY and not request.app.state.draining
    status = "ready" if ready else ("draining" if request.app.state.draining else _not_ready(state))
    body = {"status": status, "workers_ready": int(state is EngineState.READY), "workers": 1}
    return JSONResponse(body, status_code=200 if ready else 503)


def _not_ready(state: EngineState) -> str:
    return "failed" if state in (EngineState.FAILED, EngineState.CLOSED) else "loading"
