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
import dataclasses
import json
import os
import threading
import time
import uuid

from jaxprompt.settings import AT_LEAST_0, AT_LEAST_1, Settings, setting

try:  # the [serve] extra; FastAPI reads the handlers' annotations from this module's names
    from fastapi import Request as HTTPRequest
except ImportError:  # `jaxprompt serve` says how to install it
    HTTPRequest = None


@dataclasses.dataclass(frozen=True)
class ServeOptions(Settings):
    adapter: tuple[str, ...] = setting((), "a PEFT prompt-learning adapter to serve, as PATH or NAME=PATH "
                                           "(repeatable)", repeat=True)
    model: str | None = setting(None, "the frozen model; every prompt must belong to it",
                                 shown_default="the first run's")
    host: str = setting("127.0.0.1", "address to bind (127.0.0.1: this machine only)")
    port: int = setting(8000, "port to bind", range=AT_LEAST_0)
    api_key: str | None = setting(None, "require 'Authorization: Bearer KEY' on /v1", shown_default="no key")
    max_queue: int = setting(64, "requests waiting at most (more: 429)", range=AT_LEAST_1)
    max_batch: int = setting(32, "rows decoded together at most", range=AT_LEAST_1)
    batch_wait_ms: float = setting(5.0, "how long the first request to an idle server waits for others (ms)",
                                   range=AT_LEAST_0)
    max_tokens: int = setting(256, "largest max_tokens a request may ask (more: 400)", range=AT_LEAST_1)
    which: str = setting("best", "checkpoint of each run", choices=("best", "last"))
    warmup: bool = setting(False, "compile the decode programs for every batch size up to --max-batch, for each "
                                  "kind of served prompt, before taking requests (else: on first use)")


class BadRequest(Exception):
    def __init__(self, message: str, status: int = 400, param: str | None = None, kind: str = "invalid_request_error"):
        super().__init__(message)
        self.status, self.param, self.kind = status, param, kind


def error_body(message: str, kind: str = "invalid_request_error", param: str | None = None, code=None) -> dict:
    return {"error": {"message": message, "type": kind, "param": param, "code": code}}


# ---- prompts ------------------------------------------------------------------------------------

def named(spec: str) -> tuple[str, str]:
    """`NAME=PATH` or `PATH` (named after its directory)."""
    if "=" in spec and not os.path.exists(spec):
        name, path = spec.split("=", 1)
    else:
        name, path = os.path.basename(os.path.normpath(spec)), spec
    if not name:
        raise BadRequest(f"{spec!r}: a prompt needs a name")
    return name, path


def load_engine(runs: list[str], adapters: list[str], options: ServeOptions):
    """The engine over the served model, with every run's and adapter's prompt, and the bare model."""
    from jaxprompt.inference import Engine
    from jaxprompt.models.convert import resolve
    from jaxprompt.prompts import make_method
    from jaxprompt.run import read_run_info
    from jaxprompt.session import Session
    from jaxprompt.tasks import BUILTIN

    from jaxprompt.config import DEFAULT_MODEL

    specs = [named(r) for r in runs]
    first = read_run_info(specs[0][1]) if specs else None
    model_id = options.model or (first["model_dir"] if first else DEFAULT_MODEL)
    # the weights in the first run's dtype, as `jaxprompt generate` of that run loads them
    base = Session.load(model_id, BUILTIN["antonyms"], make_method("soft"),
                        dtype=first["config"].dtype if first else "float32")
    engine = Engine.of_session(base, max_batch=options.max_batch)
    engine.model_dir = os.path.realpath(resolve(model_id))
    engine.add(model_id, None)  # the bare model: raw text
    for name, path in specs:
        add_run(engine, base, name, path, options.which)
    for spec in adapters:
        add_adapter(engine, base, *named(spec), which=options.which)
    return engine, base


def add_run(engine, base, name: str, path: str, which: str = "best") -> list[str]:
    """Serves the run at `path` as `name` (a population's member k as `name@k`, a multi-task
    run's task t as `name/t`). Refused, named, if it is not a run or belongs to another model."""
    from jaxprompt.models.convert import resolve
    from jaxprompt.population import member
    from jaxprompt.prompts import method_from_spec
    from jaxprompt.run import RunError, load_prompt, read_run_info, task_of_spec
    from jaxprompt.session import Session

    if name in engine.prompts:
        raise BadRequest(f"a prompt named {name!r} is already served; DELETE /v1/prompts/{name} first", 409, "name")
    try:
        info = read_run_info(path)
    except RunError as e:
        raise BadRequest(str(e), param="path") from None
    try:
        own = os.path.realpath(resolve(info["model_dir"]))
    except Exception:
        own = info["model_dir"]
    if own != engine.model_dir:
        raise BadRequest(f"{path} was trained on {info['model_dir']}; this server serves {engine.model_id}",
                         param="path")
    tasks = [task_of_spec(spec) for spec in info["tasks"]]
    session = Session(engine.model, engine.frozen, engine.tokenizer, tasks[0], method_from_spec(info["method"]),
                      engine.model_id, engine.prompt_cache, tuple(tasks) if len(tasks) > 1 else (),
                      weights_id=base.fingerprint())
    K = len(info["members"])
    prompt = load_prompt(path, session, which, info["config"], info["steps"], members=K or None)
    views = [(f"{name}@{k}", member(prompt, k)) for k in range(K)] if K else [(name, prompt)]
    added = []
    for view_name, view in views:
        if len(tasks) > 1:
            for t, task in enumerate(tasks):
                single, task_prompt = session.task_session(t, view)
                engine.add(f"{view_name}/{task.name}", single, task_prompt)
                added.append(f"{view_name}/{task.name}")
        else:
            engine.add(view_name, session, view)
            added.append(view_name)
    return added


def add_adapter(engine, base, name: str, path: str, which: str = "best") -> list[str]:
    """A PEFT adapter, through `jaxprompt import` into a temporary run."""
    import tempfile

    from jaxprompt.export import ExportError, import_peft

    with tempfile.TemporaryDirectory() as tmp:
        try:
            run = import_peft(path, os.path.join(tmp, name), model=engine.model_dir)
        except ExportError as e:
            raise BadRequest(str(e), param="path") from None
        return add_run(engine, base, name, run, "last")


# ---- the batching worker ------------------------------------------------------------------------

@dataclasses.dataclass
class Pending:
    requests: list  # inference.Request, one per prompt of the HTTP request
    served: object
    future: asyncio.Future
    loop: asyncio.AbstractEventLoop
    cancelled: bool = False
    tickets: list = dataclasses.field(default_factory=list)  # its rows in the scheduler, once admitted
    updates: asyncio.Queue | None = None  # streamed: (row, its tokens so far) after each step, then None
    pushed: list = dataclasses.field(default_factory=list)  # streamed: how many tokens of each row were pushed


class Batcher:
    """A bounded queue and one thread stepping the engine's continuous scheduler (Orca, Yu et al.
    2022): queued requests join the running rows at the next decode step that has room for them."""

    def __init__(self, engine, max_queue: int, max_batch: int, wait_s: float):
        from jaxprompt.scheduler import Scheduler

        self.engine, self.max_queue, self.max_batch, self.wait_s = engine, max_queue, max_batch, wait_s
        self.scheduler = Scheduler(engine, max_batch)
        self.lock = threading.Lock()  # the engine (JAX) is used by one thread at a time
        self._queue: list[Pending] = []
        self._active: list[Pending] = []  # admitted into the scheduler, not answered yet
        self._cv = threading.Condition()
        self._stop = False
        self.thread = threading.Thread(target=self._run, name="jaxprompt-batcher", daemon=True)
        self.thread.start()

    def submit(self, pending: Pending) -> None:
        with self._cv:
            if len(self._queue) >= self.max_queue:
                raise BadRequest(f"too many queued requests ({self.max_queue}); retry later", 429,
                                 kind="rate_limit_error")
            self._queue.append(pending)
            self._cv.notify()

    def stop(self) -> None:
        with self._cv:
            self._stop = True
            self._cv.notify()
        self.thread.join(timeout=30)

    def _take(self) -> bool:
        """Moves queued requests into the scheduler while it has room; False when stopping and idle.
        An idle scheduler first waits `wait_s` for more requests (admitted by one prefill)."""
        with self._cv:
            while not self._queue and not self._active and not self._stop:
                self._cv.wait()
            if self._stop and not self._queue and not self._active:
                return False
            if not self._active:
                deadline = time.monotonic() + self.wait_s
                while sum(len(p.requests) for p in self._queue) < self.max_batch and time.monotonic() < deadline:
                    self._cv.wait(max(0.0, deadline - time.monotonic()))
            while self._queue and (not self._active
                                   or self.scheduler.load + len(self._queue[0].requests) <= self.max_batch):
                p = self._queue.pop(0)
                if not p.cancelled:  # a client that went away frees its place before decoding
                    p.tickets = [self.scheduler.submit(r, p.served) for r in p.requests]
                    self._active.append(p)
            return True

    def _run(self) -> None:
        while self._take():
            for p in self._active:
                if p.cancelled:  # a client that went away frees its slots at the next step
                    for t in p.tickets:
                        self.scheduler.cancel(t)
            self._active = [p for p in self._active if not p.cancelled]
            try:
                with self.lock:
                    self.scheduler.step()
            except Exception as e:  # never expected (the scheduler fails rows, not itself): answer, go on
                for p in self._active:
                    self._answer(p, e)
                self._active = []
            for p in self._active:
                self._push(p)
            for p in [p for p in self._active if all(t.finished for t in p.tickets)]:
                self._active.remove(p)
                error = next((t.error for t in p.tickets if t.error is not None), None)
                self._answer(p, error if error is not None else [t.completion for t in p.tickets])

    @staticmethod
    def _push(p: Pending) -> None:
        """A streamed request's rows that decoded a token this step: their tokens so far."""
        if p.updates is None:
            return
        p.pushed = p.pushed or [0] * len(p.tickets)
        for j, t in enumerate(p.tickets):
            if len(t.tokens) > p.pushed[j]:
                p.pushed[j] = len(t.tokens)
                p.loop.call_soon_threadsafe(p.updates.put_nowait, (j, list(t.tokens)))

    @staticmethod
    def _answer(p: Pending, result) -> None:
        def set_result():
            if not p.future.done():
                (p.future.set_exception if isinstance(result, Exception) else p.future.set_result)(result)
            if p.updates is not None:
                p.updates.put_nowait(None)

        p.loop.call_soon_threadsafe(set_result)


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
    from jaxprompt.inference import Options, Request

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
                                            "kind": served.kind or "none"}
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
