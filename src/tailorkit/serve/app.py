"""The OpenAI-compatible FastAPI app: /health, /v1/models, /v1/chat/completions, /v1/completions.

Requests go through the batching queue, so concurrent ones are generated together. The API key
and body-size guards wrap every route; bad input is answered in OpenAI's error JSON with a 4xx code.
Load is bounded: over --max_concurrent_requests in progress or --max_queue waiting, a request gets 429
with Retry-After; one running past --request_timeout_s gets 504. A client that goes away (streaming or
not) cancels its rows, which stop within a decoding step.
"""

from __future__ import annotations

import asyncio
import time
import uuid
from collections.abc import Callable
from contextlib import asynccontextmanager
from dataclasses import dataclass

from fastapi import FastAPI
from fastapi import Request as HttpRequest
from fastapi.exceptions import RequestValidationError
from fastapi.responses import JSONResponse
from starlette.concurrency import run_in_threadpool
from starlette.exceptions import HTTPException

from ..errors import GenerationError, TailorkitError
from ..infer.batching import BatchQueue, QueueFull
from ..infer.engine import Engine, Request
from .errors import ApiError, error_body
from .guards import ApiKeyGuard, BodyLimit
from .media import MediaPolicy
from .memory import ReleaseWhenIdle, return_large_buffers
from .protocol import ChatRequest, CompletionRequest, Limits, chat_requests, completion_requests, encode_checked
from .streaming import EventStream, sse_events, usage
from .tools import assistant_message

RETRY_AFTER_S = 1


@dataclass(frozen=True)
class ServerOptions:
    base_name: str  # the base model's name in the API; adapters are served under their own names
    limits: Limits
    policy: MediaPolicy
    api_key: str | None = None
    max_request_bytes: int = 20 * 1024 * 1024
    max_batch_size: int = 16
    batch_wait_s: float = 0.005
    max_queue: int = 256  # requests waiting for generation
    max_concurrent_requests: int = 256  # requests in progress (parsed, waiting or generating)
    request_timeout_s: float | None = 600.0
    enable_docs: bool = False  # /openapi.json and /docs, behind the API key


class Slots:
    """Requests in progress, at most ``limit``: `take` gives a release function, or raises 429 when full."""

    def __init__(self, limit: int):
        self.limit, self.used = limit, 0

    def take(self) -> Callable[[], None]:
        if self.used >= self.limit:
            raise busy(f"{self.used} requests are in progress and this server takes at most {self.limit} at "
                       "once (--max_concurrent_requests); retry later")
        self.used += 1
        released = False

        def release() -> None:
            nonlocal released
            if not released:
                released, self.used = True, self.used - 1

        return release


def busy(message: str) -> ApiError:
    """429: the server is at a load limit; OpenAI clients retry after Retry-After."""
    return ApiError(429, message, code="server_busy", headers={"Retry-After": str(RETRY_AFTER_S)})


def create_app(engine: Engine, opts: ServerOptions) -> FastAPI:
    """The app serving ``engine``; ``app.state.queue.stats`` records the batch sizes generated."""
    return_large_buffers()  # memory of large requests goes back to the OS (see memory.py)
    queue = BatchQueue(engine, opts.max_batch_size, opts.batch_wait_s, opts.max_queue)
    slots = Slots(opts.max_concurrent_requests)

    @asynccontextmanager
    async def lifespan(app):
        queue.start()
        yield
        await queue.close()

    docs = opts.enable_docs
    app = FastAPI(title="tailorkit", lifespan=lifespan, docs_url="/docs" if docs else None, redoc_url=None,
                  openapi_url="/openapi.json" if docs else None)
    app.state.queue, app.state.slots = queue, slots
    _add_error_handlers(app)
    names = {opts.base_name: (), **{n: (n,) for n in engine.adapter_names}}
    created = int(time.time())

    def adapters_for(model: str) -> tuple[str, ...]:
        if model not in names:
            raise ApiError(404, f"the model {model!r} does not exist; served: {', '.join(names)}", param="model",
                           code="model_not_found")
        return names[model]

    @app.get("/health")
    async def health():
        return {"status": "ok"}

    @app.get("/v1/models")
    async def models():
        return {"object": "list", "data": [{"id": n, "object": "model", "created": created, "owned_by": "tailorkit",
                                            "parent": None if n == opts.base_name else opts.base_name}
                                           for n in names]}

    async def generate(body, http: HttpRequest, build: Callable[[], list[Request]], param: str, chat: bool):
        release = slots.take()
        try:
            reqs = await run_in_threadpool(build)
            await run_in_threadpool(encode_checked, engine, reqs, param)
            if body.stream:
                response = _stream(queue, body, reqs, chat, release, opts.request_timeout_s)
                release = None  # the stream releases its slot when it ends
                return response
            return await _answer(queue, body, reqs, http, chat, opts.request_timeout_s)
        finally:
            if release is not None:
                release()

    @app.post("/v1/chat/completions")
    async def chat(body: ChatRequest, http: HttpRequest):
        adapters = adapters_for(body.model)
        return await generate(body, http, lambda: chat_requests(body, adapters, opts.limits, opts.policy),
                              "messages", chat=True)

    @app.post("/v1/completions")
    async def completions(body: CompletionRequest, http: HttpRequest):
        adapters = adapters_for(body.model)
        return await generate(body, http, lambda: completion_requests(body, adapters, opts.limits), "prompt",
                              chat=False)

    app.add_middleware(BodyLimit, max_bytes=opts.max_request_bytes)
    app.add_middleware(ReleaseWhenIdle)
    if opts.api_key:
        app.add_middleware(ApiKeyGuard, api_key=opts.api_key)  # added last = outermost: runs first
    return app


def _add_error_handlers(app: FastAPI) -> None:
    def answer(status: int, message: str, param=None, code=None, headers=None) -> JSONResponse:
        return JSONResponse(error_body(status, message, param, code), status_code=status, headers=headers)

    @app.exception_handler(ApiError)
    async def api_error(_, e: ApiError):
        return answer(e.status, e.message, e.param, e.code, e.headers)

    @app.exception_handler(QueueFull)
    async def queue_full(_, e: QueueFull):
        return answer(429, str(e), code="server_busy", headers={"Retry-After": str(RETRY_AFTER_S)})

    @app.exception_handler(GenerationError)
    async def generation_failed(_, e: GenerationError):
        return answer(500, f"generation failed: {e}")

    @app.exception_handler(TailorkitError)
    async def bad_input(_, e: TailorkitError):
        return answer(400, str(e))

    @app.exception_handler(RequestValidationError)
    async def invalid(_, e: RequestValidationError):
        errors = e.errors()
        status = 400 if any(x.get("type") == "json_invalid" for x in errors) else 422
        # of a union's branches, the one that failed on the value rather than on its type says what is wrong
        first = next((x for x in errors if not x.get("type", "").endswith("_type")), errors[0] if errors else {})
        param = ".".join(str(p) for p in first.get("loc", ())[1:] if not _union_branch(p)) or None
        return answer(status, f"{param or 'body'}: {first.get('msg', 'invalid request')}", param)

    @app.exception_handler(HTTPException)
    async def http_error(_, e: HTTPException):
        return answer(e.status_code, str(e.detail), headers=getattr(e, "headers", None))

    @app.exception_handler(Exception)
    async def internal(_, e: Exception):  # a bug, not bad input: still answered in OpenAI's format
        return answer(500, f"internal error: {type(e).__name__}")


def _union_branch(part) -> bool:
    """Whether a pydantic error location part names a branch of a union ('str', 'function-after[...]'), not a
    field: OpenAI's ``param`` is the field's path."""
    return isinstance(part, str) and (not part.isidentifier() or part in ("str", "list", "int", "float", "bool"))


def _head(body, chat: bool) -> dict:
    rid = ("chatcmpl-" if chat else "cmpl-") + uuid.uuid4().hex[:24]
    return {"id": rid, "object": "chat.completion" if chat else "text_completion", "created": int(time.time()),
            "model": body.model}


def _enqueue(queue: BatchQueue, reqs: list[Request], on_delta=None) -> list[asyncio.Future]:
    """Futures of all rows, or 429 when they do not fit in the queue together."""
    queue.check_room(len(reqs))
    return [queue.enqueue(r, None if on_delta is None else (lambda d, i=i: on_delta(i, d)))
            for i, r in enumerate(reqs)]


async def _until_disconnected(receive) -> None:
    """Returns when the client has gone away (the body has been read already, so only that can come)."""
    while (await receive())["type"] != "http.disconnect":
        pass


async def _answer(queue: BatchQueue, body, reqs: list[Request], http: HttpRequest, chat: bool,
                  timeout_s: float | None) -> dict:
    futures = _enqueue(queue, reqs)
    rows = asyncio.gather(*futures)
    gone = asyncio.ensure_future(_until_disconnected(http.receive))
    try:
        finished, _ = await asyncio.wait({rows, gone}, timeout=timeout_s, return_when=asyncio.FIRST_COMPLETED)
        if rows not in finished:
            if gone in finished:  # nobody to answer; the rows are cancelled below
                raise ApiError(499, "the client closed the connection")
            raise ApiError(504, f"the request did not finish within {timeout_s:g} s (--request_timeout_s)",
                           code="timeout")
        done = rows.result()
    finally:
        gone.cancel()
        rows.cancel()
        for f in futures:
            f.cancel()  # no-op for finished rows; ends rows still generating
    choices = []
    for i, c in enumerate(done):
        choice = {"index": i, "finish_reason": c.finish_reason, "logprobs": None}
        if chat:
            choice["message"], called = assistant_message(c.text, bool(getattr(body, "tools", None)))
            choice["finish_reason"] = called or c.finish_reason
        else:
            choice["text"] = c.text
        choices.append(choice)
    return {**_head(body, chat), "choices": choices, "usage": usage(done, body.n)}


def _stream(queue: BatchQueue, body, reqs: list[Request], chat: bool, release: Callable[[], None],
            timeout_s: float | None) -> EventStream:
    """The SSE response; rows are queued before it is returned, so a full queue is still a plain 429."""
    events: asyncio.Queue = asyncio.Queue()
    futures = _enqueue(queue, reqs, on_delta=lambda i, d: events.put_nowait((i, d)))
    for i, f in enumerate(futures):
        f.add_done_callback(lambda _, i=i: events.put_nowait((i, None)))
    include_usage = bool(body.stream_options and body.stream_options.include_usage)

    def cleanup() -> None:
        for f in futures:
            f.cancel()
        release()

    content = sse_events(events, futures, _head(body, chat), chat=chat, n=body.n, include_usage=include_usage,
                         timeout_s=timeout_s)
    return EventStream(content, cleanup)
