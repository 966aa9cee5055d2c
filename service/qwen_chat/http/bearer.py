"""The bearer-key dependency of every HTTP route that needs a key."""

from __future__ import annotations

from typing import Annotated

from fastapi import Depends, Request

from qwen_chat.auth.identity import Principal, authenticate
from qwen_chat.errors import Refusal
from qwen_chat.metrics import Transport, auth_failed
from qwen_chat.service import ServiceDep


def http_principal(request: Request, service: ServiceDep) -> Principal:
    """The caller's identity from `Authorization: Bearer <key>`; a 401 `Refusal` otherwise."""
    try:
        return authenticate(service.credentials, request.headers, request.query_params)
    except Refusal:
        auth_failed(Transport.HTTP, "key")
        raise


def render_principal(request: Request, service: ServiceDep) -> Principal | None:
    """The render endpoints' caller: none asked for with RENDER_WITHOUT_KEY (llm-d's token producer sends
    no key), else as every other route."""
    if service.settings.render_without_key:
        return None
    return http_principal(request, service)


PrincipalDep = Annotated[Principal, Depends(http_principal)]
RenderPrincipalDep = Annotated[Principal | None, Depends(render_principal)]
