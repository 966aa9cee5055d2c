"""The /ws endpoint: check origin and key before the upgrade, then hand text frames to a ChatSession.

Close codes: 1001 server shutting down, 1003 binary frame, 1008 policy (a key revoked while connected),
1009 frame too large, 1013 try again later (the key already has MAX_USER_CONNECTIONS sockets open here).
"""

from __future__ import annotations

import asyncio
import contextlib
import uuid
from typing import Any

import structlog
from fastapi import APIRouter, WebSocket
from starlette.websockets import WebSocketDisconnect, WebSocketState

from qwen_chat import tracing
from qwen_chat.auth.credentials import CredentialStore
from qwen_chat.auth.identity import PROTOCOL, Principal, authenticate, origin_allowed, still_valid
from qwen_chat.errors import ErrorCode, Refusal
from qwen_chat.metrics import ACTIVE_CONNECTIONS, REFUSALS, USER_CONNECTIONS, Transport, auth_failed
from qwen_chat.service import ServiceDep
from qwen_chat.ws.session import ChatSession

router = APIRouter()
log = structlog.get_logger(__name__)

CLOSE_UNSUPPORTED_DATA = 1003
CLOSE_POLICY = 1008
CLOSE_TOO_BIG = 1009
CLOSE_TRY_AGAIN_LATER = 1013


class SocketConnection:
    """What the drain needs of an open socket: a way to close it."""

    def __init__(self, websocket: WebSocket) -> None:
        self._websocket = websocket

    async def close(self, code: int, reason: str) -> None:
        if self._websocket.application_state is WebSocketState.CONNECTED:
            await self._websocket.close(code, reason)


@router.websocket("/ws")
async def chat_socket(websocket: WebSocket, service: ServiceDep) -> None:
    """Streaming chat; the protocol is in protocol.py. A refused handshake never upgrades."""
    settings = service.settings
    connection_id = uuid.uuid4().hex[:12]
    headers = websocket.headers
    if service.drain.draining:
        await websocket.send_denial_response(service.drain.refusal().handshake_response())
        return
    if not origin_allowed(headers.get("origin"), headers.get("host"), settings.allowed_origins):
        auth_failed(Transport.WS, "origin")
        log.warning("ws_rejected", connection_id=connection_id, reason="origin", origin=headers.get("origin"))
        refusal = Refusal(ErrorCode.FORBIDDEN, "this origin may not open the chat socket")
        await websocket.send_denial_response(refusal.handshake_response())
        return
    offered = list(websocket.scope.get("subprotocols", []))
    try:
        principal = authenticate(
            service.credentials, headers, websocket.query_params, offered, settings.allow_query_auth
        )
    except Refusal as refusal:
        auth_failed(Transport.WS, "key")
        log.warning("ws_rejected", connection_id=connection_id, reason="auth", detail=refusal.message)
        await websocket.send_denial_response(refusal.handshake_response())
        return

    await websocket.accept(subprotocol=PROTOCOL if PROTOCOL in offered else None)
    context = {"connection_id": connection_id, "user": principal.user, "transport": Transport.WS.value}
    sockets = service.open_sockets
    if settings.auth_enabled and sockets[principal.user] >= settings.max_user_connections:
        log.warning("ws_rejected", reason="connections", open=sockets[principal.user], **context)
        REFUSALS.labels(settings.model_name, Transport.WS, USER_CONNECTIONS).inc()
        limit = settings.max_user_connections
        await websocket.close(CLOSE_TRY_AGAIN_LATER, f"this key already has {limit} open connections")
        return
    log.info("ws_open", **context)
    send_lock = asyncio.Lock()

    async def send(frame: dict[str, Any]) -> None:
        async with send_lock:
            try:
                await websocket.send_json(frame)
            except (OSError, RuntimeError) as exc:
                # The socket is closing or gone (uvicorn raises RuntimeError once it has sent a close): nobody
                # is left to tell, and a reply that was streaming is cancelled, not failed.
                raise WebSocketDisconnect(1006) from exc

    # Each chat message is a trace of its own, the child of the handshake's `traceparent` when it had one.
    session = ChatSession(service, principal.user, send, context, tracing.extract(websocket.headers))
    connection = SocketConnection(websocket)
    service.drain.connections.add(connection)
    ACTIVE_CONNECTIONS.labels(Transport.WS).inc()
    reload_seconds = settings.credentials_reload_seconds
    watcher = asyncio.create_task(
        _close_when_revoked(websocket, service.credentials, principal, reload_seconds)
    )
    close_code = 1000
    sockets[principal.user] += 1
    try:
        while True:
            message = await websocket.receive()
            if message["type"] == "websocket.disconnect":
                close_code = message.get("code", 1000)
                break
            text = message.get("text")
            if text is None:
                close_code = CLOSE_UNSUPPORTED_DATA
                await websocket.close(CLOSE_UNSUPPORTED_DATA, "binary frames are not supported")
                break
            if len(text) > settings.max_message_bytes or len(text.encode()) > settings.max_message_bytes:
                close_code = CLOSE_TOO_BIG
                await websocket.close(
                    CLOSE_TOO_BIG, f"frames are limited to {settings.max_message_bytes} bytes"
                )
                break
            try:
                await session.handle_text(text)
            except WebSocketDisconnect:
                raise
            except Exception:
                # A bug must cost one message, not the connection.
                log.exception("ws_message_failed", **context)
                await send(
                    Refusal(ErrorCode.INTERNAL, "the server could not handle this message").ws_frame(None)
                )
    except WebSocketDisconnect as exc:
        close_code = exc.code
    finally:
        sockets[principal.user] -= 1
        if not sockets[principal.user]:
            del sockets[principal.user]
        watcher.cancel()
        service.drain.connections.discard(connection)
        ACTIVE_CONNECTIONS.labels(Transport.WS).dec()
        await session.close()
        log.info("ws_closed", code=close_code, **context)


async def _close_when_revoked(
    websocket: WebSocket, store: CredentialStore | None, principal: Principal, reload_seconds: float
) -> None:
    """A key removed from the Secret ends the connections that use it, within one reload period."""
    if store is None:
        return
    while True:
        await asyncio.sleep(reload_seconds)
        if not still_valid(store, principal):
            log.warning("ws_key_revoked", user=principal.user)
            if websocket.application_state is WebSocketState.CONNECTED:
                with contextlib.suppress(Exception):
                    await websocket.close(CLOSE_POLICY, "the API key was revoked")
            return
