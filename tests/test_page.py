"""The chat page in a real Chromium (Debian's, driven by Playwright) against a real server with the tiny model."""

from __future__ import annotations

import json
import shutil
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import httpx
import pytest
from playwright.sync_api import Browser, Page, Playwright, WebSocketRoute, expect, sync_playwright

from tests.support.live_server import LiveServer
from tests.support.secret_volume import KEYS

CHROMIUM = "/usr/bin/chromium"
OUTPUT = Path(__file__).resolve().parent.parent / "test-output"
XSS = "<img src=x onerror=alert(1)>"
CHROMIUM_ARGS = [
    "--no-sandbox",
    "--disable-gpu",
    "--disable-quic",
    "--no-first-run",
    "--disable-background-networking",
    "--disable-component-update",
    "--disable-sync",
]


@pytest.fixture(scope="module")
def playwright() -> Iterator[Playwright]:
    assert shutil.which(CHROMIUM), (
        "Debian's chromium package provides /usr/bin/chromium (make test installs it)"
    )
    with sync_playwright() as driver:
        yield driver


@pytest.fixture(scope="module")
def browser(playwright: Playwright) -> Iterator[Browser]:
    browser = playwright.chromium.launch(executable_path=CHROMIUM, args=CHROMIUM_ARGS, headless=True)
    yield browser
    browser.close()


@pytest.fixture
def page(browser: Browser, server: LiveServer) -> Iterator[Page]:
    context = browser.new_context(viewport={"width": 1280, "height": 800})
    page = context.new_page()
    page.set_default_timeout(20_000)
    page.requests = []  # type: ignore[attr-defined]
    page.dialogs = []  # type: ignore[attr-defined]
    page.on("request", lambda request: page.requests.append(request.url))  # type: ignore[attr-defined]
    page.on("dialog", lambda dialog: (page.dialogs.append(dialog.message), dialog.dismiss()))  # type: ignore[attr-defined]
    page.goto(server.http + "/")
    yield page
    context.close()


def connect(page: Page, key: str = KEYS["alice"]) -> None:
    page.get_by_label("API key").fill(key)
    page.get_by_role("button", name="Connect").click()


def ask(page: Page, text: str, max_new_tokens: int = 40, temperature: float | None = None) -> None:
    page.locator("summary", has_text="Settings").click()
    page.get_by_label("Max new tokens").fill(str(max_new_tokens))
    if temperature is not None:
        page.get_by_label("Temperature").fill(str(temperature))
    page.locator("summary", has_text="Settings").click()
    page.get_by_label("Message").fill(text)
    page.get_by_label("Message").press("Enter")


def last_reply(page: Page) -> Any:
    return page.locator("article.msg.assistant").last


def test_page_streams_a_reply_token_by_token(page: Page, server: LiveServer) -> None:
    connect(page)
    expect(page.locator("#status")).to_have_text("Connected")
    # Record the reply's length at every change, to see it grow before `done`.
    page.evaluate(
        """() => {
        window.lengths = [];
        new MutationObserver(() => {
          const reply = [...document.querySelectorAll('article.assistant .text')].pop();
          if (reply) window.lengths.push(reply.textContent.length);
        }).observe(document.getElementById('log'), {subtree: true, childList: true, characterData: true});
      }"""
    )
    ask(page, "hello there", max_new_tokens=200)
    expect(page.get_by_label("Message")).to_be_disabled()
    reply = last_reply(page)
    expect(reply).to_have_attribute("data-finish-reason", "length")
    lengths = [n for n in page.evaluate("window.lengths") if n > 0]
    assert len(set(lengths)) >= 5, f"the reply should grow in steps, saw {sorted(set(lengths))[:10]}"
    assert lengths == sorted(lengths)
    meta = reply.locator(".meta").inner_text()
    assert "200 tokens" in meta and "ms to first token" in meta and "tokens/s" in meta
    expect(page.get_by_label("Message")).to_be_enabled()
    expect(page.locator("article.msg.user")).to_have_text("hello there")
    assert page.evaluate("sessionStorage.getItem('qwen-chat.key')") == KEYS["alice"]
    assert KEYS["alice"] not in page.url
    # Every resource the page loaded came from this server.
    assert page.requests, "the page made requests"  # type: ignore[attr-defined]
    foreign = [url for url in page.requests if not url.startswith((server.http, server.ws))]  # type: ignore[attr-defined]
    assert foreign == []


def test_stop_ends_the_reply_early(page: Page) -> None:
    connect(page)
    ask(page, "a long story please", max_new_tokens=512, temperature=0)
    expect(last_reply(page).locator(".text")).not_to_be_empty()
    page.get_by_role("button", name="Stop").click()
    reply = last_reply(page)
    expect(reply).to_have_attribute("data-finish-reason", "cancelled")
    assert "stopped" in reply.locator(".meta").inner_text()
    assert int(reply.locator(".meta").inner_text().split(" tokens")[0]) < 512


def test_new_chat_clears_the_history(page: Page) -> None:
    connect(page)
    ask(page, "first question", max_new_tokens=10)
    expect(last_reply(page)).to_have_attribute("data-finish-reason", "length")
    ask(page, "second question", max_new_tokens=10)
    expect(page.locator("article.msg.assistant")).to_have_count(2)
    expect(last_reply(page)).to_have_attribute("data-finish-reason", "length")
    with_history = int(last_reply(page).get_attribute("data-prompt-tokens") or 0)
    page.get_by_role("button", name="New chat").click()
    expect(page.locator("article.msg")).to_have_count(0)
    ask(page, "second question", max_new_tokens=10)
    expect(last_reply(page)).to_have_attribute("data-finish-reason", "length")
    fresh = int(last_reply(page).get_attribute("data-prompt-tokens") or 0)
    assert 0 < fresh < with_history


def test_wrong_key_is_reported_in_words(page: Page) -> None:
    connect(page, "not-the-key")
    expect(page.get_by_role("alert")).to_contain_text("key was not accepted")
    expect(page.get_by_label("Message")).to_be_disabled()


def test_model_and_user_text_are_shown_literally_and_run_no_script(page: Page) -> None:
    def fake_server(ws: WebSocketRoute) -> None:
        def on_message(message: str | bytes) -> None:
            frame = json.loads(message)
            if frame["type"] != "chat":
                return
            mid = frame["id"]
            ws.send(json.dumps({"type": "start", "id": mid, "queue_position": 0}))
            for part in ("I think <b>", "hard</b>"):  # a thinking model's thinking comes first
                ws.send(json.dumps({"type": "reasoning", "id": mid, "text": part}))
            for part in ("<img src=x ", "onerror=alert(1)>", "<script>alert(2)</script>"):
                ws.send(json.dumps({"type": "token", "id": mid, "text": part}))
            ws.send(
                json.dumps(
                    {
                        "type": "done",
                        "id": mid,
                        "finish_reason": "stop",
                        "usage": {"prompt_tokens": 5, "completion_tokens": 3},
                        "timing": {"ttft_ms": 1.0, "tokens_per_second": 100.0},
                    }
                )
            )

        ws.on_message(on_message)

    page.route_web_socket("**/ws", fake_server)
    connect(page)
    ask(page, XSS)
    expect(last_reply(page)).to_have_attribute("data-finish-reason", "stop")
    expect(page.locator("article.msg.user .text")).to_have_text(XSS)
    expect(last_reply(page).locator(".text")).to_have_text(XSS + "<script>alert(2)</script>")
    thinking = last_reply(page).locator("details.thinking")
    expect(thinking.locator("summary")).to_have_text("Thinking")
    thinking.locator("summary").click()
    expect(thinking.locator(".thoughts")).to_have_text("I think <b>hard</b>")
    assert page.locator("#log img, #log script").count() == 0
    page.wait_for_timeout(300)
    assert page.dialogs == []  # type: ignore[attr-defined]


def test_error_frames_are_explained_and_the_message_is_kept(page: Page) -> None:
    def refusing_server(ws: WebSocketRoute) -> None:
        def on_message(message: str | bytes) -> None:
            frame = json.loads(message)
            if frame["type"] == "chat":
                ws.send(
                    json.dumps(
                        {
                            "type": "error",
                            "id": frame["id"],
                            "code": "rate_limited",
                            "message": "slow down",
                            "retry_after": 12,
                        }
                    )
                )

        ws.on_message(on_message)

    page.route_web_socket("**/ws", refusing_server)
    connect(page)
    ask(page, "please answer")
    expect(page.get_by_role("alert")).to_have_text("You are sending messages too fast. Try again in 12 s.")
    expect(page.get_by_label("Message")).to_have_value("please answer")
    expect(page.locator("article.msg")).to_have_count(0)


def test_lost_connection_reconnects_and_keeps_the_conversation(page: Page) -> None:
    routes: list[WebSocketRoute] = []

    def flaky_server(ws: WebSocketRoute) -> None:
        routes.append(ws)
        server = ws.connect_to_server()
        del server  # frames pass through untouched

    page.route_web_socket("**/ws", flaky_server)
    connect(page)
    ask(page, "remember me", max_new_tokens=5)
    expect(last_reply(page)).to_have_attribute("data-finish-reason", "length")
    routes[-1].close(code=1011, reason="network blip")
    expect(page.get_by_role("alert")).to_contain_text("Reconnecting")
    expect(page.locator("#status")).to_have_text("Connected", timeout=10_000)
    assert len(routes) == 2
    expect(page.locator("article.msg")).to_have_count(2)
    ask(page, "still there?", max_new_tokens=5)
    expect(page.locator("article.msg.assistant")).to_have_count(2)
    expect(last_reply(page)).to_have_attribute("data-finish-reason", "length")


def test_screenshots_of_a_finished_conversation(page: Page) -> None:
    connect(page)
    ask(page, "Hello! What can you do?", max_new_tokens=60)
    expect(last_reply(page)).to_have_attribute("data-finish-reason", "length")
    ask(page, "Tell me more about streaming.", max_new_tokens=40)
    expect(page.locator("article.msg.assistant")).to_have_count(2)
    expect(last_reply(page)).to_have_attribute("data-finish-reason", "length")
    OUTPUT.mkdir(exist_ok=True)
    for width, height in ((1280, 800), (390, 844)):
        page.set_viewport_size({"width": width, "height": height})
        path = OUTPUT / f"chat-{width}x{height}.png"
        page.screenshot(path=str(path))
        assert path.stat().st_size > 10_000


def test_page_headers(server: LiveServer) -> None:
    response = httpx.get(server.http + "/")
    assert response.status_code == 200 and "text/html" in response.headers["content-type"]
    csp = response.headers["content-security-policy"]
    assert "default-src 'none'" in csp and "script-src 'self'" in csp and "unsafe-inline" not in csp
    assert response.headers["x-content-type-options"] == "nosniff"
    assert response.headers["referrer-policy"] == "no-referrer"
    for asset in ("/static/chat.js", "/static/chat.css"):
        assert httpx.get(server.http + asset).status_code == 200
    assert httpx.get(server.http + "/whoami").status_code == 401
    who = httpx.get(server.http + "/whoami", headers={"Authorization": f"Bearer {KEYS['bob']}"})
    assert who.json() == {"user": "bob"}
