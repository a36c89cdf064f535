"""`jaxprompt serve`: one frozen model, many learned prompts, behind an OpenAI-compatible HTTP API.

    GET  /health, /v1/models
    POST /v1/completions        model = a prompt's name; prompt (string or list), max_tokens,
                                temperature, top_p, stop, seed, logprobs, echo, stream (SSE)
    POST /v1/prompts            {"name", "path"}: load a run (or a PEFT adapter) while serving
    DELETE /v1/prompts/{name}

Requests wait in a bounded queue; one worker thread steps the engine's rows through
`scheduler.Scheduler` (continuous batching: at most `--max-batch` rows decode together, a finished
row's slot taken by a waiting request at the next step; an idle server waits `--batch-wait-ms` for
a burst to arrive). The engine is used from that thread only (JAX calls are serialised by a lock),
so prompts are loaded and unloaded between decode steps: a request keeps the prompt it was
admitted with. Bad requests get OpenAI's error shape ({"error": {"message", "type",
"param", "code"}}) with a 4xx status and never stop the server.
"""

from __future__ import annotations

import asyncio
import json
import os
import time
import uuid

from jaxprompt.serving.batcher import Batcher, Pending
from jaxprompt.serving.options import BadRequest, ServeOptions, error_body
from jaxprompt.serving.prompts import add_adapter, add_run

try:  # the [serve] extra; FastAPI reads the handlers' annotations from this module's names
    from fastapi import Request as HTTPRequest
except ImportError:  # `jaxprompt serve` says how to install it
    HTTPRequest = None


# ---- the HTTP API -------------------------------------------------------------------------------

def _field(body: dict, name: str, kind, default, check=None, what: str = ""):
    value = body.get(name, default)
    if value is None:
        return default
    if kind is float and isinstance(value, int) and not isinstance(value, bool):
        value = float(value)
    if not isinstance(value, kind) or isinstance(value, bool) and kind is not bool:
        raise BadRequest(f"'{name}' must be {what}, got {json.dumps(value)}", param=name)
    if check is not None and not check(value):
        raise BadRequest(f"'{name}' must be {what}, got {json.dumps(value)}", param=name)
    return value


def parse_completion(body, engine, options: ServeOptions):
    """(requests, served, echo texts, stream, logprobs) of a /v1/completions body, every field checked."""
    from jaxprompt.inference.requests import Options, Request

    if not isinstance(body, dict):
        raise BadRequest("the request body must be a JSON object")
    name = body.get("model")
    if not isinstance(name, str):
        raise BadRequest("'model' must be a served prompt's name (see GET /v1/models)", param="model")
    served = engine.prompts.get(name)
    if served is None:
        raise BadRequest(f"unknown model {name!r}; served: {', '.join(sorted(engine.prompts))}", 404, "model",
                         kind="not_found_error")
    prompts = body.get("prompt")
    if isinstance(prompts, str):
        prompts = [prompts]
    if not isinstance(prompts, list) or not prompts or not all(isinstance(p, str) for p in prompts):
        raise BadRequest("'prompt' must be a string or a non-empty list of strings", param="prompt")
    if any(not p.strip() for p in prompts):
        raise BadRequest("'prompt' is empty", param="prompt")
    limit = min(options.max_tokens, engine.config.max_positions)
    max_tokens = _field(body, "max_tokens", int, 16, lambda v: 1 <= v <= limit, f"an integer in 1..{limit}")
    temperature = _field(body, "temperature", float, 1.0, lambda v: 0 <= v <= 2, "a number in [0, 2]")
    top_p = _field(body, "top_p", float, 1.0, lambda v: 0 < v <= 1, "a number in (0, 1]")
    top_k = _field(body, "top_k", int, 0, lambda v: v >= 0, "an integer >= 0")
    seed = _field(body, "seed", int, 0, lambda v: v >= 0, "an integer >= 0")
    logprobs = _field(body, "logprobs", int, None, lambda v: 0 <= v <= 5, "an integer in 0..5")
    echo = _field(body, "echo", bool, False, None, "true or false")
    stream = _field(body, "stream", bool, False, None, "true or false")
    raw = _field(body, "raw", bool, False, None, "true or false")
    n = _field(body, "n", int, 1, lambda v: v == 1, "1 (one completion per prompt)")
    del n
    stop = body.get("stop")
    stop = [stop] if isinstance(stop, str) else stop
    if stop is not None and (not isinstance(stop, list) or len(stop) > 4 or not all(isinstance(s, str) for s in stop)):
        raise BadRequest("'stop' must be a string or a list of at most 4 strings", param="stop")
    opts = Options(max_tokens=max_tokens, temperature=temperature, top_p=top_p, top_k=top_k, seed=seed,
                   stop=tuple(stop or ()), logprobs=logprobs)
    requests = [Request(name, text=p, options=opts, raw=raw, key=j) for j, p in enumerate(prompts)]
    for r in requests:  # input that does not fit is refused here, before it is queued
        try:
            engine.check(r, served)
        except ValueError as e:
            raise BadRequest(" ".join(str(e).split()), param="prompt") from None
    return requests, served, prompts if echo else None, stream


def _choice(completion, index: int, echo: str | None) -> dict:
    text = (echo or "") + completion.text
    logprobs = None
    if completion.logprobs is not None:
        logprobs = {"tokens": [t for t in completion.token_texts], "token_logprobs": completion.logprobs,
                    "top_logprobs": completion.top_logprobs,
                    "text_offset": completion.offsets(len(echo or ""))}
    return {"text": text, "index": index, "logprobs": logprobs, "finish_reason": completion.finish_reason}


def _usage(completions) -> dict:
    prompt = sum(c.prompt_tokens for c in completions)
    done = sum(c.completion_tokens for c in completions)
    return {"prompt_tokens": prompt, "completion_tokens": done, "total_tokens": prompt + done}


def build_app(engine, base, options: ServeOptions, batcher: Batcher):
    from fastapi import FastAPI
    from fastapi.exceptions import RequestValidationError
    from fastapi.responses import JSONResponse, StreamingResponse
    from starlette.exceptions import HTTPException

    app = FastAPI(title="jaxprompt serve")

    def fail(status: int, message: str, kind: str = "invalid_request_error", param=None):
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

    async def json_body(request: HTTPRequest):
        raw = await request.body()
        try:
            return json.loads(raw)
        except ValueError as e:
            raise BadRequest(f"the request body is not valid JSON ({e})") from None

    @app.get("/health")
    async def health():
        return {"status": "ok", "model": engine.model_id, "prompts": len(engine.prompts)}

    @app.get("/v1/models")
    async def models():
        return {"object": "list", "data": [{"id": name, "object": "model", "created": 0, "owned_by": "jaxprompt",
                                            "method": served.method.name if served.method is not None else "none"}
                                           for name, served in sorted(engine.prompts.items())]}

    @app.post("/v1/prompts")
    async def load(request: HTTPRequest):
        body = await json_body(request)
        if not isinstance(body, dict) or not isinstance(body.get("path"), str):
            raise BadRequest("the body must be {\"name\": NAME, \"path\": RUN_DIR}", param="path")
        name = body.get("name") or os.path.basename(os.path.normpath(body["path"]))
        if not isinstance(name, str):
            raise BadRequest("'name' must be a string", param="name")

        def add():
            with batcher.lock:
                if os.path.isfile(os.path.join(body["path"], "adapter_config.json")):
                    return add_adapter(engine, base, name, body["path"])
                return add_run(engine, base, name, body["path"], options.which)

        try:
            added = await asyncio.get_running_loop().run_in_executor(None, add)
        except (ValueError, OSError) as e:
            if isinstance(e, BadRequest):
                raise
            raise BadRequest(f"{body['path']}: {' '.join(str(e).split())}", param="path") from None
        return {"added": added}

    @app.delete("/v1/prompts/{name:path}")
    async def unload(name: str):
        if name not in engine.prompts or name == engine.model_id:
            raise BadRequest(f"no loaded prompt {name!r}", 404, "name", kind="not_found_error")
        with batcher.lock:
            engine.remove(name)  # requests admitted with it keep their reference
        return {"deleted": name}

    @app.post("/v1/completions")
    async def completions(request: HTTPRequest):
        body = await json_body(request)
        requests, served, echo, stream = parse_completion(body, engine, options)
        loop = asyncio.get_running_loop()
        # streamed token by token, unless log-probabilities are asked (they come with the completion)
        live = stream and all(r.options.logprobs is None for r in requests)
        pending = Pending(requests, served, loop.create_future(), loop, updates=asyncio.Queue() if live else None)
        batcher.submit(pending)
        ident, created = f"cmpl-{uuid.uuid4().hex[:24]}", int(time.time())
        head = {"id": ident, "object": "text_completion", "created": created, "model": served.name}
        if not stream:
            results = await _until_done(pending, request)
            if results is None:
                return JSONResponse({}, status_code=499)
            return {**head, "choices": [_choice(c, j, echo[j] if echo else None) for j, c in enumerate(results)],
                    "usage": _usage(results)}

        async def events():
            sent = [""] * len(requests)  # each row's text streamed so far
            try:
                if echo:
                    for j, text in enumerate(echo):
                        yield _chunk(head, j, text)
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
                    text = engine.streamable(requests[j].options, tokens)
                    if len(text) > len(sent[j]) and text.startswith(sent[j]):
                        yield _chunk(head, j, text[len(sent[j]):])
                        sent[j] = text
                results = await _until_done(pending, request)
            except asyncio.CancelledError:  # the client went away
                pending.cancelled = True
                raise
            except BadRequest as e:  # the status line is sent: the error is the stream's one event
                yield f"data: {json.dumps(error_body(str(e), e.kind, e.param))}\n\n"
                return
            if results is None:
                return
            for j, c in enumerate(results):
                if pending.updates is None:  # token by token, now that the log-probabilities are known
                    for piece in c.pieces():
                        yield _chunk(head, j, piece)
                elif c.text.startswith(sent[j]) and len(c.text) > len(sent[j]):
                    yield _chunk(head, j, c.text[len(sent[j]):])  # what was held back
                yield _chunk(head, j, "", c.finish_reason)
            yield f"data: {json.dumps({**head, 'choices': [], 'usage': _usage(results)})}\n\n"
            yield "data: [DONE]\n\n"

        return StreamingResponse(events(), media_type="text/event-stream")

    return app


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


def _chunk(head: dict, index: int, text: str, finish_reason: str | None = None) -> str:
    choice = {"text": text, "index": index, "logprobs": None, "finish_reason": finish_reason}
    return f"data: {json.dumps({**head, 'choices': [choice]})}\n\n"


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
