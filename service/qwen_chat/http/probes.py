"""Kubernetes probes and Prometheus: /livez while the event loop answers, /readyz once every worker of
the pod has loaded and warmed the model (and none is draining), /health as vLLM and TGI answer it (200
when this worker can serve: benchmark clients such as guidellm probe it first), /metrics aggregated over
workers."""

from __future__ import annotations

import asyncio

from fastapi import APIRouter, Response
from fastapi.responses import JSONResponse

from qwen_chat import metrics
from qwen_chat.engine.api.interface import EngineState
from qwen_chat.service import ServiceDep

router = APIRouter(tags=["probes"])


@router.get("/livez")
async def livez() -> dict[str, str]:
    return {"status": "ok"}


@router.get("/readyz")
async def readyz(service: ServiceDep) -> JSONResponse:
    pod = service.readiness.pod()
    return JSONResponse(pod.as_dict(), status_code=200 if pod.ready else 503)


@router.get(
    "/health",
    response_class=Response,
    responses={200: {"description": "this worker can serve"}, 503: {"description": "it cannot (yet)"}},
)
async def health(service: ServiceDep) -> Response:
    """200 with an empty body when this worker's model is loaded and it is not draining, else 503."""
    serving = service.engine.state is EngineState.READY and not service.drain.draining
    return Response(status_code=200 if serving else 503)


@router.get("/metrics")
async def prometheus_metrics() -> Response:
    body, content_type = await asyncio.to_thread(metrics.render)
    return Response(body, media_type=content_type)
