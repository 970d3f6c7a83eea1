"""Server-sent events in OpenAI's chunk format, and a response that always cleans up after itself.

Once a stream has started its status is 200, so a failure after that is an error event (OpenAI's error
JSON) followed by ``data: [DONE]``.
"""

from __future__ import annotations

import asyncio
import json
import time
from collections.abc import AsyncIterator, Callable

from fastapi.responses import StreamingResponse

from ..errors import GenerationError
from .errors import error_body


class EventStream(StreamingResponse):
    """An SSE response that runs ``cleanup`` however it ends: finished, failed, or the client went away
    (Starlette then cancels the body iterator, possibly before it started, so its own finally may not run)."""

    def __init__(self, content: AsyncIterator[str], cleanup: Callable[[], None]):
        super().__init__(content, media_type="text/event-stream", headers={"Cache-Control": "no-cache"})
        self._cleanup = cleanup

    async def __call__(self, scope, receive, send):
        try:
            await super().__call__(scope, receive, send)
        finally:
            self._cleanup()


def usage(done: list, n: int) -> dict:
    """OpenAI's usage of a request's Completions (``n`` per prompt)."""
    prompt = sum(c.prompt_tokens for c in done[::n])  # each prompt counted once however many samples
    completion = sum(c.completion_tokens for c in done)
    return {"prompt_tokens": prompt, "completion_tokens": completion, "total_tokens": prompt + completion}


def _failure(future: asyncio.Future) -> str:
    err = future.exception()
    if isinstance(err, GenerationError):
        return error_line(500, f"generation failed: {err}")
    return error_line(500, f"internal error: {type(err).__name__}")


def error_line(status: int, message: str, code: str | None = None) -> str:
    """An SSE event carrying OpenAI's error JSON (the stream's status is already 200)."""
    return f"data: {json.dumps(error_body(status, message, code=code))}\n\n"


async def sse_events(events: asyncio.Queue, futures: list[asyncio.Future], head: dict, *, chat: bool, n: int,
                     include_usage: bool, timeout_s: float | None) -> AsyncIterator[str]:
    """Chunks of every row's reply as ``events`` brings them ((row, text) deltas, (row, None) at its end),
    ending with 'data: [DONE]'."""
    head = {**head, "object": "chat.completion.chunk" if chat else "text_completion"}
    deadline = None if not timeout_s else time.monotonic() + timeout_s

    def chunk(i: int, text: str | None, reason: str | None = None, first: bool = False) -> str:
        if chat:
            delta = {"role": "assistant", "content": ""} if first else ({"content": text} if text else {})
            choice = {"index": i, "delta": delta, "finish_reason": reason, "logprobs": None}
        else:
            choice = {"index": i, "text": text or "", "finish_reason": reason, "logprobs": None}
        return f"data: {json.dumps({**head, 'choices': [choice]})}\n\n"

    if chat:
        for i in range(len(futures)):
            yield chunk(i, None, first=True)
    remaining = len(futures)
    while remaining:
        try:
            left = None if deadline is None else max(0.0, deadline - time.monotonic())
            i, delta = await asyncio.wait_for(events.get(), left)
        except TimeoutError:
            yield error_line(504, f"the request did not finish within {timeout_s:g} s (--request_timeout_s)",
                             code="timeout")
            break
        if delta is not None:
            yield chunk(i, delta)
            continue
        remaining -= 1
        if futures[i].cancelled() or futures[i].exception() is not None:
            yield _failure(futures[i]) if not futures[i].cancelled() else error_line(500, "generation was cancelled")
            break
        yield chunk(i, None, futures[i].result().finish_reason)
    else:
        if include_usage:
            yield f"data: {json.dumps({**head, 'choices': [], 'usage': usage([f.result() for f in futures], n)})}\n\n"
    yield "data: [DONE]\n\n"
