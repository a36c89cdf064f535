"""Completions -> OpenAI's response bodies and stream chunks: text completions
(`text_completion`) and chat completions (`chat.completion`, `chat.completion.chunk`)."""
from __future__ import annotations

import json
import time
import uuid


def head(kind: str, model: str) -> dict:
    """What every body and chunk of one response shares: its id, object type, time and model."""
    prefix = "chatcmpl" if kind.startswith("chat") else "cmpl"
    return {"id": f"{prefix}-{uuid.uuid4().hex[:24]}", "object": kind, "created": int(time.time()), "model": model}


def usage(completions) -> dict:
    prompt = sum(c.prompt_tokens for c in completions)
    done = sum(c.completion_tokens for c in completions)
    return {"prompt_tokens": prompt, "completion_tokens": done, "total_tokens": prompt + done}


def event(body: dict) -> str:
    return f"data: {json.dumps(body)}\n\n"


DONE = "data: [DONE]\n\n"

# ---- /v1/completions -----------------------------------------------------------------------------


def text_choice(completion, index: int, echo: str | None) -> dict:
    text = (echo or "") + completion.text
    logprobs = None
    if completion.logprobs is not None:
        logprobs = {"tokens": list(completion.token_texts), "token_logprobs": completion.logprobs,
                    "top_logprobs": completion.top_logprobs, "text_offset": completion.offsets(len(echo or ""))}
    return {"text": text, "index": index, "logprobs": logprobs, "finish_reason": completion.finish_reason}


def text_chunk(top: dict, index: int, text: str, finish_reason: str | None = None) -> str:
    return event({**top, "choices": [{"text": text, "index": index, "logprobs": None, "finish_reason": finish_reason}]})


# ---- /v1/chat/completions ------------------------------------------------------------------------


def chat_logprobs(completion) -> dict | None:
    """OpenAI's chat shape: each token's text, log-probability and UTF-8 bytes, with its alternatives."""
    if completion.logprobs is None:
        return None

    def entry(token: str, logprob: float) -> dict:
        return {"token": token, "logprob": logprob, "bytes": list(token.encode("utf-8"))}

    tops = completion.top_logprobs or [{} for _ in completion.logprobs]
    return {"content": [{**entry(t, lp), "top_logprobs": [entry(a, v) for a, v in top.items()]}
                        for t, lp, top in zip(completion.token_texts, completion.logprobs, tops)]}


def chat_choice(completion) -> dict:
    return {"index": 0, "message": {"role": "assistant", "content": completion.text},
            "logprobs": chat_logprobs(completion), "finish_reason": completion.finish_reason}


def chat_chunk(top: dict, delta: dict, finish_reason: str | None = None, logprobs: dict | None = None) -> str:
    return event({**top, "choices": [{"index": 0, "delta": delta, "logprobs": logprobs,
                                      "finish_reason": finish_reason}]})
