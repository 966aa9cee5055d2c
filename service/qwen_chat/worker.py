"""The gunicorn worker class: uvicorn's worker with the WebSocket settings this service needs."""

from __future__ import annotations

from typing import Any, ClassVar

from uvicorn_worker import UvicornWorker

from qwen_chat.settings import get_settings


class QwenChatWorker(UvicornWorker):
    CONFIG_KWARGS: ClassVar[dict[str, Any]] = {
        "loop": "auto",
        "http": "auto",
        "ws": "websockets-sansio",
        "lifespan": "on",
    }

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        # uvicorn closes a connection with 1009 when a frame is larger than this.
        self.config.ws_max_size = get_settings().max_message_bytes
