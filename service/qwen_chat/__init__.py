"""qwen-chat: a Qwen chat model behind a streaming WebSocket and HTTP API."""

__version__ = "0.1.0"
