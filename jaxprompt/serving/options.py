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

import dataclasses

from jaxprompt.settings import AT_LEAST_0, AT_LEAST_1, Settings, setting


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
