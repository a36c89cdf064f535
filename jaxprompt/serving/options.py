"""`jaxprompt serve`'s settings (`ServeOptions`, the flags) and the error body every bad request
gets (OpenAI's shape: {"error": {"message", "type", "param", "code"}}).
"""
from __future__ import annotations

import dataclasses

from jaxprompt.config import QUANTIZE, QUANTIZE_HELP
from jaxprompt.settings import AT_LEAST_0, AT_LEAST_1, Settings, setting

INSTALL = "jaxprompt serve needs the [serve] extra: pip install 'jaxprompt[serve]'"
MESSAGE_LIMIT = 500  # characters of a bad value an error message quotes at most


@dataclasses.dataclass(frozen=True)
class ServeOptions(Settings):
    adapter: tuple[str, ...] = setting((), "a PEFT prompt-learning adapter to serve, as PATH or NAME=PATH "
                                           "(repeatable)", repeat=True)
    prompts: str | None = setting(None, "a directory whose runs and PEFT adapters are served on demand (each "
                                        "loaded on its first request)", shown_default="none")
    max_resident: int = setting(64, "prompts kept on the device (their parameters and heads), least recently "
                                    "used evicted to the host; the prompt cache keeps twice as many heads in "
                                    "memory", range=AT_LEAST_1)
    model: str | None = setting(None, "the frozen model; every prompt must belong to it",
                                 shown_default="the first run's, on the command line or in --prompts")
    quantize: str = setting("run", QUANTIZE_HELP + " (run: as the first run trained)", choices=("run", *QUANTIZE))
    host: str = setting("127.0.0.1", "address to bind (127.0.0.1: this machine only)")
    port: int = setting(8000, "port to bind", range=AT_LEAST_0)
    api_key: str | None = setting(None, "require 'Authorization: Bearer KEY' on /v1", shown_default="no key")
    max_queue: int = setting(64, "requests waiting at most (more: 429)", range=AT_LEAST_1)
    max_batch: int = setting(32, "rows decoded together at most", range=AT_LEAST_1)
    batch_wait_ms: float = setting(5.0, "how long the first request to an idle server waits for others (ms)",
                                   range=AT_LEAST_0)
    max_tokens: int = setting(256, "largest max_tokens a request may ask (more: 400)", range=AT_LEAST_1)
    max_body_kb: int = setting(1024, "largest request body in KiB (more: 413)", range=AT_LEAST_1)
    which: str = setting("best", "checkpoint of each run", choices=("best", "last"))
    warmup: bool = setting(False, "compile the decode programs for every batch size up to --max-batch, for each "
                                  "kind of served prompt, before taking requests (else: on first use)")


class BadRequest(Exception):
    """A request the server refuses: its status (4xx), OpenAI's error type and the field at fault."""

    def __init__(self, message: str, status: int = 400, param: str | None = None, kind: str = "invalid_request_error"):
        super().__init__(" ".join(message.split())[:2 * MESSAGE_LIMIT])
        self.status, self.param, self.kind = status, param, kind


def not_found(message: str, param: str = "model") -> BadRequest:
    return BadRequest(message, 404, param, kind="not_found_error")


def error_body(message: str, kind: str = "invalid_request_error", param: str | None = None, code=None) -> dict:
    return {"error": {"message": message, "type": kind, "param": param, "code": code}}
