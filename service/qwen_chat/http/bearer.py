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


PrincipalDep = Annotated[Principal, Depends(http_principal)]
