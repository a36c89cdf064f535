"""`jaxprompt serve`: one frozen model, many learned prompts, behind an OpenAI-compatible HTTP API.

    GET  /health, /metrics (Prometheus), /v1/models (every prompt available, with parent/root and
         whether it is resident)
    POST /v1/completions        model = a prompt's name; prompt (text, token ids, or a list), max_tokens,
                                temperature, top_p, top_k, stop, seed, logprobs, echo, raw, stream (SSE)
    POST /v1/chat/completions   messages rendered by the model's chat template; max_tokens or
                                max_completion_tokens, temperature, top_p, top_k, stop, seed,
                                logprobs/top_logprobs, stream (SSE chunks in OpenAI's chat shape)
    POST /v1/prompts            {"name", "path"}: load a run (or a PEFT adapter) while serving
    DELETE /v1/prompts/{name}

A request names its prompt; a prompt not on the device is loaded first (library.py: on loader
threads, while other prompts' rows decode). Requests wait in a bounded queue; one worker thread
steps the engine's rows through `scheduler.Scheduler` (continuous batching: at most `--max-batch`
rows decode together, a finished row's slot taken by a waiting request at the next step; an idle
server waits `--batch-wait-ms` for a burst to arrive). A request keeps the prompt it was admitted
with, whatever is loaded or evicted meanwhile. Bad requests get OpenAI's error shape
({"error": {"message", "type", "param", "code"}}) with a 4xx status and never stop the server.
"""

from __future__ import annotations

import asyncio
import os
import time

from jaxprompt.serving import responses
from jaxprompt.serving.batcher import Batcher, Pending
from jaxprompt.serving.library import Library
from jaxprompt.serving.metrics import Metrics
from jaxprompt.serving.options import BadRequest, ServeOptions, error_body
from jaxprompt.serving.parse import (
    chat_body,
    chat_request,
    completion_body,
    completion_requests,
    field,
    json_body,
)

try:  # the [serve] extra; FastAPI reads the handlers' annotations from this module's names
    from fastapi import Request as HTTPRequest
except ImportError:  # `jaxprompt serve` says how to install it
    HTTPRequest = None


def build_app(engine, library: Library, options: ServeOptions, batcher: Batcher, chat_template=None):
    from fastapi import FastAPI
    from fastapi.exceptions import RequestValidationError
    from fastapi.responses import JSONResponse, Response, StreamingResponse
    from starlette.exceptions import HTTPException

    app = FastAPI(title="jaxprompt serve")
    metrics = Metrics(batcher, library, engine.prompt_cache)
    app.state.metrics = metrics
    body_limit = options.max_body_kb * 1024

    def fail(status: int, message: str, kind: str = "invalid_request_error", param=None):
        metrics.refused.labels(status=str(status)).inc()
        return JSONResponse(error_body(message, kind, param), status_code=status)

    @app.exception_handler(BadRequest)
    async def bad_request(_, e: BadRequest):
        return fail(e.status, str(e), e.kind, e.param)

    @app.exception_handler(HTTPException)
    async def http_error(_, e: HTTPException):
        kind = "not_found_error" if e.status_code == 404 else "invalid_request_error"
        return fail(e.status_code, str(e.detail), kind)

    @app.exception_handler(RequestValidationError)
    async def invalid(_, e: RequestValidationError):
        return fail(400, "; ".join(str(x.get("msg")) for x in e.errors()))

    if options.api_key is not None:
        app.add_middleware(BearerKey, key=options.api_key)

    async def read_body(request: HTTPRequest) -> dict:
        declared = request.headers.get("content-length", "")
        if declared.isdigit() and int(declared) > body_limit:  # refused before it is read
            raise BadRequest(f"the request body is {declared} bytes; this server takes at most {body_limit}", 413)
        return json_body(await request.body(), body_limit)

    async def acquire(name: str):
        """The prompt as served: at once if resident, else after its load (other rows decode on)."""
        future = library.acquire(name)
        waiting = not future.done()
        metrics.loading += waiting
        try:
            return await asyncio.wrap_future(future)
        except BadRequest:
            raise
        except (ValueError, OSError) as e:  # a run or adapter that cannot be read: named, the server goes on
            raise BadRequest(f"model {name!r} cannot be loaded: {' '.join(str(e).split())}", param="model") from None
        finally:
            metrics.loading -= waiting

    @app.get("/health")
    async def health():
        return {"status": "ok", "model": engine.model_id, "prompts": len(library.resident)}

    @app.get("/metrics")
    async def prometheus():
        from prometheus_client import CONTENT_TYPE_LATEST

        return Response(metrics.text(), media_type=CONTENT_TYPE_LATEST)

    @app.get("/v1/models")
    async def models():
        available = await asyncio.get_running_loop().run_in_executor(None, library.available)
        root = {"id": engine.model_id, "object": "model", "created": 0, "owned_by": "jaxprompt",
                "root": engine.model_id, "parent": None, "resident": True, "method": "none"}
        resident = dict(library.resident)
        return {"object": "list", "data": [root] + [
            {"id": name, "object": "model", "created": 0, "owned_by": "jaxprompt", "root": engine.model_id,
             "parent": engine.model_id, "resident": name in resident,
             "method": resident[name].method_name if name in resident else None}
            for name in sorted(available) if name != engine.model_id]}

    @app.post("/v1/prompts")
    async def load(request: HTTPRequest):
        body = await read_body(request)
        path = field(body, "path", str, None, lambda p: bool(p), "a run or adapter directory")
        if path is None:
            raise BadRequest("the body must be {\"name\": NAME, \"path\": RUN_DIR}", param="path")
        name = field(body, "name", str, None, lambda n: bool(n.strip()), "a non-empty string") or \
            os.path.basename(os.path.normpath(path))
        try:
            added = await asyncio.get_running_loop().run_in_executor(None, library.add, name, path)
        except BadRequest:
            raise
        except (ValueError, OSError) as e:
            raise BadRequest(f"{path}: {' '.join(str(e).split())}", param="path") from None
        return {"added": added}

    @app.delete("/v1/prompts/{name:path}")
    async def unload(name: str):
        library.remove(name)  # requests admitted with it keep their reference
        return {"deleted": name}

    def submit(requests, served, live: bool) -> Pending:
        loop = asyncio.get_running_loop()
        pending = Pending(requests, served, loop.create_future(), loop, updates=asyncio.Queue() if live else None)
        batcher.submit(pending)
        return pending

    def answered(pending: Pending, model: str, endpoint: str, results) -> None:
        metrics.answered(model, endpoint, results, pending.arrived, pending.first_token, time.monotonic())

    @app.post("/v1/completions")
    async def completions(request: HTTPRequest):
        arrived = time.monotonic()
        parsed = completion_body(await read_body(request), options, engine.config.max_positions)
        served = await acquire(parsed.model)
        requests = completion_requests(parsed, served, engine)
        echo = [p if isinstance(p, str) else engine.tokenizer.decode(p) for p in parsed.texts] if parsed.echo else None
        # streamed token by token, unless log-probabilities are asked (they come with the completion)
        pending = submit(requests, served, parsed.stream and parsed.sampling.logprobs is None)
        pending.arrived = arrived
        top = responses.head("text_completion", served.name)
        if not parsed.stream:
            results = await _until_done(pending, request)
            if results is None:
                return JSONResponse({}, status_code=499)
            answered(pending, served.name, "completions", results)
            return {**top, "choices": [responses.text_choice(c, j, echo[j] if echo else None)
                                       for j, c in enumerate(results)], "usage": responses.usage(results)}

        async def events():
            for j, text in enumerate(echo or []):
                yield responses.text_chunk(top, j, text)
            results = None
            async for item in _stream(pending, request, engine, requests):
                if isinstance(item, str):
                    yield item
                elif item[0] == "text":
                    yield responses.text_chunk(top, item[1], item[2])
                else:
                    results = item[1]
            if results is None:
                return
            for j, c in enumerate(results):
                if pending.updates is None:  # token by token, now that the log-probabilities are known
                    for piece in c.pieces():
                        yield responses.text_chunk(top, j, piece)
                yield responses.text_chunk(top, j, "", c.finish_reason)
            answered(pending, served.name, "completions", results)
            yield responses.event({**top, "choices": [], "usage": responses.usage(results)})
            yield responses.DONE

        return StreamingResponse(events(), media_type="text/event-stream")

    @app.post("/v1/chat/completions")
    async def chat(request: HTTPRequest):
        arrived = time.monotonic()
        parsed = chat_body(await read_body(request), options, engine.config.max_positions)
        if chat_template is None:  # refused before any load
            chat_request(parsed, None, engine, None)
        served = await acquire(parsed.model)
        one = chat_request(parsed, served, engine, chat_template)
        pending = submit([one], served, parsed.stream and parsed.sampling.logprobs is None)
        pending.arrived = arrived
        top = responses.head("chat.completion" if not parsed.stream else "chat.completion.chunk", served.name)
        if not parsed.stream:
            results = await _until_done(pending, request)
            if results is None:
                return JSONResponse({}, status_code=499)
            answered(pending, served.name, "chat", results)
            return {**top, "choices": [responses.chat_choice(results[0])], "usage": responses.usage(results)}

        async def events():
            yield responses.chat_chunk(top, {"role": "assistant", "content": ""})
            results = None
            async for item in _stream(pending, request, engine, [one]):
                if isinstance(item, str):
                    yield item
                elif item[0] == "text":
                    yield responses.chat_chunk(top, {"content": item[2]})
                else:
                    results = item[1]
            if results is None:
                return
            c = results[0]
            if pending.updates is None:  # each token with its log-probabilities
                for entry in responses.chat_logprobs(c)["content"]:
                    yield responses.chat_chunk(top, {"content": entry["token"]}, logprobs={"content": [entry]})
            yield responses.chat_chunk(top, {}, c.finish_reason)
            answered(pending, served.name, "chat", results)
            if parsed.include_usage:
                yield responses.event({**top, "choices": [], "usage": responses.usage(results)})
            yield responses.DONE

        return StreamingResponse(events(), media_type="text/event-stream")

    return app


async def _stream(pending: Pending, request, engine, requests):
    """A streamed request's new text per row as it decodes (("text", row, piece)), then
    ("done", completions); an error after the status line is the stream's one event (a string);
    nothing more if the client went away."""
    sent = [""] * len(requests)  # each row's text streamed so far
    try:
        while pending.updates is not None:
            try:
                update = await asyncio.wait_for(pending.updates.get(), 0.1)
            except asyncio.TimeoutError:
                if await request.is_disconnected():
                    pending.cancelled = True
                    return
                continue
            if update is None:  # answered
                break
            j, tokens = update
            text = engine.streamable(requests[j].sampling, tokens)
            if len(text) > len(sent[j]) and text.startswith(sent[j]):
                yield ("text", j, text[len(sent[j]):])
                sent[j] = text
        results = await _until_done(pending, request)
    except asyncio.CancelledError:  # the client went away
        pending.cancelled = True
        raise
    except BadRequest as e:
        yield responses.event(error_body(str(e), e.kind, e.param))
        return
    if results is None:
        return
    for j, c in enumerate(results):
        if pending.updates is not None and c.text.startswith(sent[j]) and len(c.text) > len(sent[j]):
            yield ("text", j, c.text[len(sent[j]):])  # what was held back
    yield ("done", results)


class BearerKey:
    """`Authorization: Bearer KEY` required on /v1 (401 otherwise), as plain ASGI: Starlette's
    `@app.middleware("http")` runs every request through a task and a stream of its own."""

    def __init__(self, app, key: str):
        self.app, self.expected = app, f"Bearer {key}".encode()

    async def __call__(self, scope, receive, send):
        if scope["type"] == "http" and scope["path"].startswith("/v1") \
                and dict(scope["headers"]).get(b"authorization", b"") != self.expected:
            from fastapi.responses import JSONResponse

            body = error_body("missing or wrong API key (send 'Authorization: Bearer KEY')", "authentication_error")
            await JSONResponse(body, status_code=401)(scope, receive, send)
            return
        await self.app(scope, receive, send)


async def _until_done(pending: Pending, request):
    """The completions, or None if the client went away first (its place in the queue is freed)."""
    while True:
        done, _ = await asyncio.wait({pending.future}, timeout=0.1)
        if done:
            result = pending.future.result()
            if isinstance(result, Exception):
                raise BadRequest(" ".join(str(result).split()), param="prompt")
            return result
        if await request.is_disconnected():
            pending.cancelled = True
            return None
