"""A reply streamed as Server-Sent Events ends with a body the client can read, however it ends.

Once the 200 and the first event are out, a failure can no longer be a status code. Whatever ends the reply
early (its engine dies, a bug of ours in the stream or in the code that renders it) ends it in the
transport's own error shape, then its normal terminator, and the response completes: never a connection cut
mid-body, which the `openai` SDK reports as a connection error and retries, charging a second generation for
one request.
"""

from __future__ import annotations

from collections.abc import AsyncGenerator, AsyncIterator, Callable
from contextlib import aclosing

from qwen_chat.chat.stream import ChatStream
from qwen_chat.errors import Refusal


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
        for chunk in failed(stream.failure(exc)):
            yield chunk
    finally:
        await stream.aclose()
