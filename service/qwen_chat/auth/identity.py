"""Who is calling: the key from a bearer header, a browser subprotocol or (opt-in) seed-style query
parameters, checked against the credential store; and whether a browser Origin may open /ws."""

from __future__ import annotations

import base64
import binascii
from dataclasses import dataclass
from urllib.parse import urlsplit

from starlette.datastructures import Headers, QueryParams

from qwen_chat.auth.credentials import CredentialStore
from qwen_chat.errors import ErrorCode, Refusal

PROTOCOL = "qwen-chat.v1"
BEARER_PREFIX = "qwen-chat.bearer."
ANONYMOUS = "anonymous"


@dataclass(frozen=True)
class Principal:
    user: str
    # Kept in memory only, so that an open connection can notice its key being revoked.
    key: str = ""


def _unauthorized(message: str) -> Refusal:
    """Refuse the request (401); the message never contains the key."""
    return Refusal(ErrorCode.UNAUTHORIZED, message)


def encode_bearer_subprotocol(key: str) -> str:
    """What a browser offers next to `qwen-chat.v1`: base64url of the key, without padding."""
    return BEARER_PREFIX + base64.urlsafe_b64encode(key.encode()).decode().rstrip("=")


def _decode_bearer_subprotocol(value: str) -> str:
    encoded = value[len(BEARER_PREFIX) :]
    try:
        return base64.urlsafe_b64decode(encoded + "=" * (-len(encoded) % 4)).decode()
    except (binascii.Error, UnicodeDecodeError, ValueError):
        raise _unauthorized("the bearer subprotocol is not valid base64url") from None


def presented_key(
    headers: Headers, subprotocols: list[str], query: QueryParams, allow_query_auth: bool
) -> tuple[str | None, str | None]:
    """The (user, key) the client presented; user is known only for query-string auth."""
    authorization = headers.get("authorization")
    if authorization:
        scheme, _, token = authorization.partition(" ")
        if scheme.lower() != "bearer" or not token.strip():
            raise _unauthorized("the Authorization header must be 'Bearer <key>'")
        return None, token.strip()
    for protocol in subprotocols:
        if protocol.startswith(BEARER_PREFIX):
            return None, _decode_bearer_subprotocol(protocol)
    if "secret" in query or "userid" in query:
        if not allow_query_auth:
            raise _unauthorized("query-string credentials are disabled; send 'Authorization: Bearer <key>'")
        return query.get("userid", ""), query.get("secret", "")
    return None, None


def authenticate(
    store: CredentialStore | None,
    headers: Headers,
    query: QueryParams,
    subprotocols: list[str] | None = None,
    allow_query_auth: bool = False,
) -> Principal:
    """Check the presented key, or raise a `Refusal` (401); `store` None means authentication is disabled."""
    if store is None:
        return Principal(ANONYMOUS)
    user, key = presented_key(headers, subprotocols or [], query, allow_query_auth)
    if key is None:
        raise _unauthorized("an API key is required: send 'Authorization: Bearer <key>'")
    if user is not None:
        if user and store.check(user, key):
            return Principal(user, key)
        raise _unauthorized("invalid user id or secret")
    found = store.authenticate(key)
    if found is None:
        raise _unauthorized("invalid API key")
    return Principal(found, key)


def still_valid(store: CredentialStore | None, principal: Principal) -> bool:
    """Whether an authenticated connection's key is still current (keys rotate without restarts)."""
    return store is None or store.check(principal.user, principal.key)


def origin_allowed(origin: str | None, host: str | None, allowed: list[str]) -> bool:
    """Browsers always send Origin on a WebSocket handshake; other clients may omit it and are allowed."""
    if origin is None:
        return True
    origin = origin.rstrip("/")
    if allowed:
        return "*" in allowed or origin in allowed
    # Same origin only: the Origin's host[:port] must be the Host the request was sent to.
    return host is not None and urlsplit(origin).netloc.lower() == host.lower()
