"""The OpenAI-compatible FastAPI app: /health, /v1/models, /v1/chat/completions, /v1/completions.

Requests go through the batching queue, so concurrent ones are generated together. The API key
and body-size guards wrap every route; bad input is answered in OpenAI's error JSON with a 4xx code.
"""

from __future__ import annotations

import asyncio
import json
import time
import uuid
from contextlib import asynccontextmanager
from dataclasses import dataclass

from fastapi import FastAPI
from fastapi.exceptions import RequestValidationError
from fastapi.responses import JSONResponse, StreamingResponse
from starlette.concurrency import run_in_threadpool
from starlette.exceptions import HTTPException

from ..errors import TailorkitError
from ..infer.batching import BatchQueue
from ..infer.engine import Completion, Engine, Request
from .errors import ApiError, error_body
from .guards import ApiKeyGuard, BodyLimit
from .media import MediaPolicy
from .protocol import ChatRequest, CompletionRequest, Limits, chat_requests, completion_requests, encode_checked
from .tools import assistant_message


@dataclass(frozen=True)
class ServerOptions:
    base_name: str  # the base model's name in the API; adapters are served under their own names
    limits: Limits
    policy: MediaPolicy
    api_key: str | None = None
    max_request_bytes: int = 20 * 1024 * 1024
    max_batch_size: int = 16
    batch_wait_s: float = 0.005


def create_app(engine: Engine, opts: ServerOptions) -> FastAPI:
    """The app serving ``engine``; ``app.state.queue.stats`` records the batch sizes generated."""
    queue = BatchQueue(engine, opts.max_batch_size, opts.batch_wait_s)

    @asynccontextmanager
    async def lifespan(app):
        queue.start()
        yield
        await queue.close()

    app = FastAPI(title="tailorkit", lifespan=lifespan, docs_url=None, redoc_url=None, openapi_url=None)
    app.state.queue = queue
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

    @app.post("/v1/chat/completions")
    async def chat(body: ChatRequest):
        reqs = await run_in_threadpool(chat_requests, body, adapters_for(body.model), opts.limits, opts.policy)
        await run_in_threadpool(encode_checked, engine, reqs, "messages")
        return await _respond(queue, body, reqs, chat=True)

    @app.post("/v1/completions")
    async def completions(body: CompletionRequest):
        reqs = completion_requests(body, adapters_for(body.model), opts.limits)
        await run_in_threadpool(encode_checked, engine, reqs, "prompt")
        return await _respond(queue, body, reqs, chat=False)

    app.add_middleware(BodyLimit, max_bytes=opts.max_request_bytes)
    if opts.api_key:
        app.add_middleware(ApiKeyGuard, api_key=opts.api_key)  # added last = outermost: runs first
    return app


def _add_error_handlers(app: FastAPI) -> None:
    @app.exception_handler(ApiError)
    async def api_error(_, e: ApiError):
        return JSONResponse(error_body(e.status, e.message, e.param, e.code), status_code=e.status)

    @app.exception_handler(TailorkitError)
    async def bad_input(_, e: TailorkitError):
        return JSONResponse(error_body(400, str(e)), status_code=400)

    @app.exception_handler(RequestValidationError)
    async def invalid(_, e: RequestValidationError):
        errors = e.errors()
        status = 400 if any(x.get("type") == "json_invalid" for x in errors) else 422
        first = errors[0] if errors else {}
        param = ".".join(str(p) for p in first.get("loc", ())[1:]) or None
        return JSONResponse(error_body(status, f"{param or 'body'}: {first.get('msg', 'invalid request')}", param),
                            status_code=status)

    @app.exception_handler(HTTPException)
    async def http_error(_, e: HTTPException):
        return JSONResponse(error_body(e.status_code, str(e.detail)), status_code=e.status_code)

    @app.exception_handler(Exception)
    async def internal(_, e: Exception):  # a bug, not bad input: still answered in OpenAI's format
        return JSONResponse(error_body(500, f"internal error: {type(e).__name__}"), status_code=500)


def _usage(reqs: list[Request], done: list[Completion], n: int) -> dict:
    prompt = sum(c.prompt_tokens for c in done[::n])  # each prompt counted once however many samples
    completion = sum(c.completion_tokens for c in done)
    return {"prompt_tokens": prompt, "completion_tokens": completion, "total_tokens": prompt + completion}


async def _respond(queue: BatchQueue, body, reqs: list[Request], *, chat: bool):
    rid = ("chatcmpl-" if chat else "cmpl-") + uuid.uuid4().hex[:24]
    head = {"id": rid, "object": "chat.completion" if chat else "text_completion", "created": int(time.time()),
            "model": body.model}
    if body.stream:
        include_usage = bool(body.stream_options and body.stream_options.include_usage)
        return StreamingResponse(_stream(queue, reqs, head, chat, body.n, include_usage),
                                 media_type="text/event-stream", headers={"Cache-Control": "no-cache"})
    done = await asyncio.gather(*(queue.enqueue(r) for r in reqs))
    choices = []
    for i, c in enumerate(done):
        choice = {"index": i, "finish_reason": c.finish_reason, "logprobs": None}
        if chat:
            choice["message"], called = assistant_message(c.text, bool(getattr(body, "tools", None)))
            choice["finish_reason"] = called or c.finish_reason
        else:
            choice["text"] = c.text
        choices.append(choice)
    return {**head, "choices": choices, "usage": _usage(reqs, done, body.n)}


async def _stream(queue: BatchQueue, reqs: list[Request], head: dict, chat: bool, n: int, include_usage: bool):
    """SSE chunks in OpenAI's format, ending with 'data: [DONE]'."""
    head = {**head, "object": "chat.completion.chunk" if chat else "text_completion"}
    events: asyncio.Queue = asyncio.Queue()
    futures = []
    for i, r in enumerate(reqs):
        fut = queue.enqueue(r, on_delta=lambda d, i=i: events.put_nowait((i, d)))
        fut.add_done_callback(lambda f, i=i: events.put_nowait((i, None)))
        futures.append(fut)

    def chunk(i: int, text: str | None, reason: str | None = None, first: bool = False) -> str:
        if chat:
            delta = {"role": "assistant", "content": ""} if first else ({"content": text} if text else {})
            choice = {"index": i, "delta": delta, "finish_reason": reason, "logprobs": None}
        else:
            choice = {"index": i, "text": text or "", "finish_reason": reason, "logprobs": None}
        return f"data: {json.dumps({**head, 'choices': [choice]})}\n\n"

    try:
        if chat:
            for i in range(len(reqs)):
                yield chunk(i, None, first=True)
        remaining = len(reqs)
        while remaining:
            i, delta = await events.get()
            if delta is not None:
                yield chunk(i, delta)
                continue
            remaining -= 1
            if futures[i].cancelled() or futures[i].exception() is not None:
                err = futures[i].exception() if not futures[i].cancelled() else None
                yield f"data: {json.dumps(error_body(500, f'generation failed: {err}'))}\n\n"
                break
            yield chunk(i, None, futures[i].result().finish_reason)
        else:
            if include_usage:
                usage = _usage(reqs, [f.result() for f in futures], n)
                yield f"data: {json.dumps({**head, 'choices': [], 'usage': usage})}\n\n"
        yield "data: [DONE]\n\n"
    finally:
        for f in futures:
            f.cancel()
