"""A row's generated ids -> its `Completion`: cut at EOS, at the request's max_tokens and at its
first stop string (`finish`); the text a stream may send before the row ends (`streamable`); and
the log-probabilities of the completion's tokens, by one teacher-forced pass (`with_logprobs`).

Axes: B rows, T input positions, N completion positions, V vocabulary.
"""

from __future__ import annotations

from functools import partial

import jax
import numpy as np

from jaxprompt.inference.batch import input_embeds, pow2, to_host
from jaxprompt.inference.requests import Completion
from jaxprompt.inference.sampling import TOP_LOGPROBS, Sampling
from jaxprompt.inference.served import Row
from jaxprompt.models import positions_from_mask
from jaxprompt.prompts.forward import token_logprobs


def cut(tokenizer, sampling: Sampling, ids: list[int]) -> tuple[list[int], str, str, bool]:
    """The cuts a completion makes of a row's tokens: at EOS, at the request's `max_tokens`, and
    its text at the first stop string. (ids, text, finish reason, whether a stop string cut)."""
    eos = tokenizer.eos_token_id
    reason = "length"
    if eos is not None and eos in ids:
        ids, reason = ids[:ids.index(eos)], "stop"
    if len(ids) > sampling.max_tokens:
        ids, reason = ids[:sampling.max_tokens], "length"
    text = tokenizer.decode(ids)
    cuts = [text.index(s) for s in sampling.stop if s and s in text]
    if cuts:
        return ids, text[:min(cuts)], "stop", True
    return ids, text, reason, False


def finish(tokenizer, row: Row, ids: list[int]) -> Completion:
    """EOS, the request's own max_tokens and stop strings cut the row's tokens."""
    ids, text, reason, stopped = cut(tokenizer, row.sampling, ids)
    if stopped:
        n = 0  # the tokens whose text lies before the stop string
        while n < len(ids) and len(tokenizer.decode(ids[:n + 1])) <= len(text):
            n += 1
        ids = ids[:n]
    pieces = [tokenizer.decode(ids[:n + 1]) for n in range(len(ids))]
    token_texts = [b[len(a):] if b.startswith(a) else b for a, b in zip([""] + pieces, pieces)]
    return Completion(ids, text, reason, row.prompt_tokens, token_texts=token_texts)


def streamable(tokenizer, sampling: Sampling, ids: list[int]) -> str:
    """The text of a row's first tokens that its completion will begin with, whatever comes next:
    `cut`'s text, less a character still being spelled (bytes of it in later tokens) and any end
    that may be the start of a stop string."""
    _, text, _, stopped = cut(tokenizer, sampling, ids)
    if stopped:
        return text
    text = text.rstrip("\ufffd")
    held = max((k for s in sampling.stop for k in range(1, len(s)) if text.endswith(s[:k])), default=0)
    return text[:len(text) - held]


def with_logprobs(model, frozen, tokenizer, rows: list[Row], batch: dict, completions: list[Completion]) -> None:
    """Sets the log-probabilities of each row's completion tokens (and the most likely alternatives)
    where its request asks for them, by one teacher-forced pass over input + completion."""
    B, T = batch["tokens"].shape
    N = pow2(max(max(len(c.tokens) for c in completions), 1))
    tokens = np.concatenate([batch["tokens"], np.full((B, N), tokenizer.pad_token_id, np.int32)], 1)
    mask = np.concatenate([batch["mask"], np.zeros((B, N), bool)], 1)
    slots = np.concatenate([batch["slots"], np.full((B, N), -1, np.int32)], 1)
    # shift each row right so input + completion ends at the last slot (left padding kept)
    for b, c in enumerate(completions):
        n = len(c.tokens)
        tokens[b] = np.roll(tokens[b], N - n)
        mask[b] = np.roll(mask[b], N - n)
        slots[b] = np.roll(slots[b], N - n)
        tokens[b, T + N - n:], mask[b, T + N - n:] = c.tokens, True
    chosen, top_values, top_ids = _score_batch(model, frozen, {**batch, "tokens": tokens, "mask": mask,
                                                                "slots": slots}, N)
    chosen, top_values, top_ids = map(to_host, (chosen, top_values, top_ids))
    for b, (row, c) in enumerate(zip(rows, completions)):
        if row.sampling.logprobs is None:
            continue
        n, k = len(c.tokens), row.sampling.logprobs
        c.logprobs = [float(x) for x in chosen[b, N - n:]]
        c.top_logprobs = [{tokenizer.decode([int(i)]): float(x)
                           for i, x in zip(top_ids[b, j, :k], top_values[b, j, :k])}
                          for j in range(N - n, N)] if k else None


@partial(jax.jit, static_argnames=("model", "n_last"))
def _score_batch(model, frozen, batch, n_last):
    """Log-probabilities of the last `n_last` tokens of each row (and the top alternatives there)."""
    positions = positions_from_mask(batch["mask"], batch["start"])
    hidden, _ = model.transformer(frozen, input_embeds(model, frozen, batch), positions, batch["mask"],
                                  prefix=batch["prefix"], adapter=batch["adapter"])
    chosen, _, (top_values, top_ids) = token_logprobs(model, frozen, hidden[:, -n_last - 1:-1],
                                                      batch["tokens"][:, -n_last:], top=TOP_LOGPROBS)
    return chosen, top_values, top_ids
