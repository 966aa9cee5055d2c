"""Security of a real 2-worker `qwen-chat serve`, default settings: every way a key can be presented, right
and wrong, on every route; then everything captured (the log, /metrics, every response's body and headers)
is scanned for the keys, and every error for tracebacks and server paths. Foreign origins cannot open /ws
(cross-site WebSocket hijacking), query-string keys are refused, every response carries the security
headers. Figures: test-output/reliability/security-scan.json.

Covered elsewhere: test_ws.py (origin, query auth and bearer subprotocol on an in-process server), test_page.py
(test_page_headers: the page's CSP), test_chart.py (test_security_contexts_are_locked_down: runAsNonRoot,
read-only root filesystem, no privilege escalation) and test_image_lint.py
(test_the_final_stage_runs_as_the_fixed_non_root_uid).
"""

from __future__ import annotations

import asyncio
import json
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import httpx
import pytest
from websockets.exceptions import InvalidStatus

from qwen_chat.auth.identity import PROTOCOL, encode_bearer_subprotocol
from tests.support.reliability_tools import (
    Figures,
    error_log_lines,
    leaked_internals,
    leaked_secrets,
    secrets_of,
)
from tests.support.secret_volume import KEYS
from tests.support.serve_process import ServeProcess, serve_process
from tests.support.wsclient import chat, open_socket

pytestmark = pytest.mark.anyio

ALICE, BOB = KEYS["alice"], KEYS["bob"]
# Not keys of any user, but secrets a client sent: they must not be echoed or logged either.
WRONG = "wrong-key-5f2b9c1d7e"
SECURITY_HEADERS = {
    "content-security-policy": "default-src 'none'",
    "x-content-type-options": "nosniff",
    "referrer-policy": "no-referrer",
    "x-frame-options": "DENY",
}


@pytest.fixture
def server(tmp_path: Path, tiny_model_dir: Path) -> Iterator[ServeProcess]:
    with serve_process(tmp_path, tiny_model_dir, workers=2, max_new_tokens="4") as live:
        live.wait_ready()
        yield live


def http_requests(model: str) -> list[tuple[str, str, dict[str, str], Any]]:
    """(method, path, headers, json body): each route with the key right, wrong, misplaced or missing."""
    good = {"Authorization": f"Bearer {ALICE}"}
    chat_body = {"model": model, "messages": [{"role": "user", "content": "hi"}], "max_tokens": 2}
    requests: list[tuple[str, str, dict[str, str], Any]] = []
    for headers in (
        good,
        {"Authorization": f"Bearer {WRONG}"},
        {"Authorization": ALICE},  # no scheme
        {"Authorization": f"Basic {ALICE}"},
        {"Authorization": f"Bearer {BOB} {ALICE}"},
        {"X-Api-Key": ALICE},
        {},
    ):
        requests += [
            ("GET", "/v1/models", headers, None),
            ("POST", "/v1/chat/completions", headers, chat_body),
            ("POST", "/chat", headers, {"prompt": "hi", "max_new_tokens": 2}),
            ("POST", "/chat_stream", headers, {"prompt": "hi", "max_new_tokens": 2}),
            ("GET", "/whoami", headers, None),
        ]
    requests += [
        # Keys in query strings (never accepted over HTTP; and they must not reach the access log).
        ("GET", f"/v1/models?api_key={ALICE}", {}, None),
        ("GET", f"/whoami?userid=alice&secret={ALICE}", {}, None),
        ("POST", f"/chat?key={BOB}", {}, {"prompt": "hi"}),
        # Errors of every kind, with a good key.
        ("GET", "/no/such/path", good, None),
        ("DELETE", "/v1/models", good, None),
        ("POST", "/v1/chat/completions", good, {"model": model, "messages": "not a list"}),
        ("POST", "/v1/chat/completions", good, {"model": "other-model", "messages": [{"role": "user"}]}),
        ("POST", "/chat", good, {"prompt": 42}),
        ("POST", "/chat", good, {"prompt": "hi", "max_new_tokens": 10**9}),
        ("POST", "/chat_stream", good, {"history": "x"}),
        # Open endpoints.
        ("GET", "/livez", {}, None),
        ("GET", "/readyz", {}, None),
        ("GET", "/metrics", {}, None),
        ("GET", "/", {}, None),
        ("GET", "/static/chat.js", {}, None),
        ("GET", "/openapi.json", good, None),
    ]
    return requests


def foreign_origins(port: int) -> list[str]:
    return [
        "https://evil.example",
        "null",  # sandboxed iframes and file:// pages
        f"http://127.0.0.1:{port}.evil.example",  # the service's host:port as a prefix
        f"http://evil.example/127.0.0.1:{port}",
        f"http://127.0.0.1:{port + 1}",  # another port on the same host is another origin
        f"http://localhost:{port}",  # another name for the same host is another origin too
    ]


async def test_no_key_reaches_a_log_a_metric_or_a_response(server: ServeProcess) -> None:
    figures = Figures("security-scan")
    captured: dict[str, str] = {}
    problems: list[str] = []
    async with httpx.AsyncClient(base_url=server.http, timeout=60) as http:
        models = await http.get("/v1/models", headers={"Authorization": f"Bearer {ALICE}"})
        model = models.json()["data"][0]["id"]
        for index, (method, path, headers, body) in enumerate(http_requests(model)):
            response = await http.request(method, path, headers=headers, json=body)
            where = f"{method} {path.split('?')[0]} #{index} -> {response.status_code}"
            captured[where] = response.text + "\n" + json.dumps(dict(response.headers))
            figures.add(f"http {response.status_code}")
            missing = [h for h, v in SECURITY_HEADERS.items() if v not in response.headers.get(h, "")]
            if missing:
                problems.append(f"{where}: no {missing}")
            if response.status_code >= 500:
                problems.append(f"{where}: a server error")
            if response.status_code >= 400:
                leak = leaked_internals(response.text)
                if leak:
                    problems.append(f"{where}: internals in the error: {leak!r}")
                if (
                    response.status_code == 401
                    and "bearer" not in response.headers.get("www-authenticate", "").lower()
                ):
                    problems.append(f"{where}: a 401 without WWW-Authenticate")
        # An authenticated request carrying a key in its query string still must not log it.
        await http.get(f"/v1/models?secret={BOB}", headers={"Authorization": f"Bearer {ALICE}"})

    # /ws: every way to present a key, right and wrong.
    ws_cases: list[tuple[str, dict[str, Any], int | None]] = [
        ("bearer header", {"user": "alice"}, None),
        (
            "browser subprotocol",
            {"user": None, "subprotocols": [PROTOCOL, encode_bearer_subprotocol(BOB)]},
            None,
        ),
        ("wrong bearer", {"user": None, "additional_headers": {"Authorization": f"Bearer {WRONG}"}}, 401),
        (
            "wrong subprotocol",
            {"user": None, "subprotocols": [PROTOCOL, encode_bearer_subprotocol(WRONG)]},
            401,
        ),
        ("broken subprotocol", {"user": None, "subprotocols": [PROTOCOL, "qwen-chat.bearer.%%%"]}, 401),
        ("no key", {"user": None}, 401),
        ("query string (off by default)", {"user": None, "query": f"?userid=alice&secret={ALICE}"}, 401),
        ("query string with a header key", {"user": "bob", "query": f"?secret={ALICE}"}, None),
    ]
    for name, options, refused_with in ws_cases:
        url = server.ws + options.pop("query", "")
        try:
            async with open_socket(url, **options) as ws:
                frames = await chat(ws, "hello", params={"max_new_tokens": 2})
                captured[f"ws {name}"] = "\n".join(json.dumps(f) for f in frames)
                outcome = None if frames[-1]["type"] == "done" else -1
        except InvalidStatus as exc:
            outcome = exc.response.status_code
            captured[f"ws {name}"] = exc.response.body.decode(errors="replace") + json.dumps(
                dict(exc.response.headers)
            )
        figures.add(f"ws {outcome or 'chatted'}")
        if outcome != refused_with:
            problems.append(f"/ws {name}: {outcome}, expected {refused_with or 'a chat'}")

    # Cross-site WebSocket hijacking: a page elsewhere cannot open the socket, even with a valid key.
    for origin in foreign_origins(server.port):
        for options in (
            {"user": "alice"},
            {"user": None, "subprotocols": [PROTOCOL, encode_bearer_subprotocol(ALICE)]},
        ):
            try:
                async with open_socket(server.ws, origin=origin, **options):  # type: ignore[arg-type]
                    problems.append(f"/ws opened from the foreign origin {origin}")
            except InvalidStatus as exc:
                figures.add(f"foreign origin {exc.response.status_code}")
                captured[f"ws origin {origin}"] = exc.response.body.decode(errors="replace")
                if exc.response.status_code != 403:
                    problems.append(f"/ws from {origin}: {exc.response.status_code}, expected 403")
    async with open_socket(server.ws, origin=f"http://127.0.0.1:{server.port}") as ws:
        assert (await chat(ws, "same origin", params={"max_new_tokens": 2}))[-1]["type"] == "done"

    await asyncio.sleep(0.5)  # the last access lines
    log = server.log.read_text()
    captured["log"] = log
    captured["metrics"] = server.metrics_text()
    secrets = secrets_of([WRONG])
    leaks = leaked_secrets(captured, secrets)
    # The refused query-string key is logged redacted, not dropped silently.
    redacted = "secret=[redacted]" in log
    figures.set(
        http_requests=len(http_requests(model)) + 2,
        ws_handshakes=len(ws_cases),
        foreign_origin_handshakes=2 * len(foreign_origins(server.port)),
        captured_texts=len(captured),
        captured_bytes=sum(len(t) for t in captured.values()),
        secrets_scanned_for=len(secrets),
        leaks=leaks,
        problems=problems,
    )
    figures.write()
    assert not leaks, leaks
    assert not problems, "\n".join(problems)
    assert redacted
    assert not error_log_lines(log), error_log_lines(log)[:5]
