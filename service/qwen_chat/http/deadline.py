"""The `X-Request-Timeout: <seconds>` header every HTTP chat route reads, as one dependency: `DeadlineDep` is
the request's deadline in seconds within the operator's QWEN_CHAT_REQUEST_TIMEOUT (None: no bound), to hand
to `Admission.start` / `start_prompt` as `deadline`. A malformed value is a `bad_request` naming the header.

The header is read off the request rather than declared as a FastAPI `Header`: declared, it would be in
/openapi.json, and a schema fuzzer sending tiny deadlines would read the 504s that rightly follow as server
errors. The README documents it."""

from __future__ import annotations

import re
from typing import Annotated

from fastapi import Depends
from starlette.requests import Request

from qwen_chat.chat.deadline import effective_timeout
from qwen_chat.errors import ErrorCode, Refusal
from qwen_chat.service import ServiceDep

HEADER = "X-Request-Timeout"
# Plain decimal seconds: no sign, exponent, `inf`, `nan` or `1_0`, which Python's float() would take.
_SECONDS = re.compile(r"\s*(\d+(\.\d*)?|\.\d+)\s*")


def parse_timeout(value: str | None) -> float | None:
    """The header's seconds (None when absent); anything but a number greater than 0 is refused."""
    if value is None:
        return None
    seconds = float(value) if _SECONDS.fullmatch(value) else 0.0
    if seconds <= 0:
        message = f"{HEADER}: must be a number of seconds greater than 0, such as 30 or 2.5"
        raise Refusal(ErrorCode.BAD_REQUEST, message, param=HEADER)
    return seconds


def request_deadline(request: Request, service: ServiceDep) -> float | None:
    """The deadline a chat request runs under: its header's, within the operator's bound."""
    return effective_timeout(service.settings.request_timeout, parse_timeout(request.headers.get(HEADER)))


DeadlineDep = Annotated[float | None, Depends(request_deadline)]
