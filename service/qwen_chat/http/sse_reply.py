"""A reply streamed as Server-Sent Events ends with a body the client can read, however it ends.

Once the 200 and the first event are out, a failure can no longer be a status code. Whatever ends the reply
early (its engine dies, a bug of ours in the stream or in the code that renders it) ends it in the
transport's own error shape, then its normal terminator, and the response completes: never a connection cut
mid-body, which a client cannot tell from a network failure (the `openai` SDK raises `APIConnectionError`,
with no reason).
"""

from __future__ import annotations

from collections.abc import AsyncGenerator, AsyncIterator, Callable
from contextlib import aclosing

from qwen_chat.chat.stream import SERVER_FAILED, ChatStream, error_type
from qwen_chat.errors import ErrorCode, Refusal


async def ended_in_band(
    stream: ChatStream, chunks: AsyncGenerator[bytes], failed: Callable[[Refusal], list[bytes]]
) -> AsyncIterator[bytes]:
    """`chunks`, the reply's events; if they end in an exception, `failed(refusal)`, the events that say so
    (the failure counted once as `error`, and logged). The reply is closed however it ends."""
    try:
        async with aclosing(chunks):
            async for chunk in chunks:
                yield chunk
    except Exception as exc:
        try:
            refusal = stream.failure(exc)
        except Exception:  # even logging it failed: the client is still told, and counted as `error`
            stream.usage.ended("error", error_type(exc))
            refusal = Refusal(ErrorCode.INTERNAL, SERVER_FAILED)
        for chunk in failed(refusal):
            yield chunk
    finally:
        await stream.aclose()
