"""Choice tasks scored by likelihood ("rank classification", as Lester et al. and lm-eval score
classification and multiple choice): each candidate continuation's log-likelihood given the
prompted context; the best is the prediction.

The context is computed once per example; every candidate is then read on top of its keys/values
(kddubey/backprompt's trick), so K candidates cost one context pass plus K short passes, not K
full forward passes. The same pure function serves evaluation, lm-eval requests and training
with `--loss choices` (training/choices.py). The batch layout is data/choices.py's.
"""
from __future__ import annotations

import dataclasses
from typing import Sequence

import jax
import jax.numpy as jnp
import numpy as np
from jaxtyping import Array, Bool, Float

from jaxprompt.data.choices import ChoiceExample, collate_choices, encode_choices, utf8_length
from jaxprompt.models import Model, Prefix, positions_from_mask
from jaxprompt.prompts.forward import head_of, logprobs_of, prompt_inputs, rest_of, shared_head, shared_len_of

_NEVER = -1e30  # a padding candidate's score: exp() of it is 0, its gradient finite


def _context_keys_values(model: Model, frozen: dict, method, prompt, batch: dict, step, head: Prefix | None):
    """(hidden of the context's last real position [B, E], its keys/values as a Prefix [L, B, P+T],
    the adapter, and the number of positions before each row's first candidate token [B])."""
    shared_len = shared_len_of(batch)
    if shared_len:
        if head is None:
            head = shared_head(model, frozen, method, prompt, head_of(batch, shared_len), step)
        part = rest_of(batch, shared_len)
        inputs = prompt_inputs(model, frozen, method, prompt, part, step)
        prefix = head  # holds the method's own prefix keys/values too
    else:
        part = batch
        inputs = prompt_inputs(model, frozen, method, prompt, part, step)
        prefix = inputs.prefix
    embeds, mask = inputs.embeds, part["mask"]
    B, T = mask.shape
    start = 0 if prefix is None else prefix.length
    cache = model.init_cache(B, T, embeds.dtype)
    hidden, cache = model.transformer(frozen, embeds, positions_from_mask(mask, start), mask, cache, prefix,
                                      inputs.adapter)
    n = jnp.sum(mask, axis=1).astype(jnp.int32)
    last = jnp.take_along_axis(hidden, jnp.maximum(n - 1, 0)[:, None, None], axis=1)[:, 0]
    L = cache.k.shape[0]
    k, v, kv_mask = cache.k, cache.v, jnp.broadcast_to(mask[None], (L, B, T))
    if prefix is not None:  # [prefix | context]: right padding keeps slot index == position for real slots
        grow = lambda x: jnp.broadcast_to(x, (L, B, *x.shape[2:]))
        k = jnp.concatenate([grow(prefix.k).astype(k.dtype), k], axis=2)
        v = jnp.concatenate([grow(prefix.v).astype(v.dtype), v], axis=2)
        kv_mask = jnp.concatenate([grow(prefix.mask), kv_mask], axis=2)
    return last, Prefix(k, v, kv_mask), inputs.adapter, start + n


def choice_logprobs(model: Model, frozen: dict, method, prompt, batch: dict, step=0, head: Prefix | None = None
                    ) -> tuple[Float[Array, "B K"], Bool[Array, "B K"]]:
    """Each candidate's summed log-likelihood given its context, and whether greedy decoding would
    produce it (lm-eval's `is_greedy`). Padding candidates score `_NEVER`. Pure and differentiable
    (gradients reach the prompt through the context's keys/values)."""
    last, context, adapter, before = _context_keys_values(model, frozen, method, prompt, batch, step, head)
    B, K, C = batch["choice_tokens"].shape
    tokens = batch["choice_tokens"].reshape(B * K, C)
    mask = batch["choice_mask"].reshape(B * K, C)
    # the context's last position predicts each candidate's first token; candidate token j the j+1th
    logits = jnp.repeat(model.unembed(frozen, last), K, axis=0)[:, None]  # [B*K, 1, V]
    if C > 1:  # single-token candidates (verbalizers) need nothing past the context
        per_candidate = lambda x: jnp.repeat(x, K, axis=1)  # [L, B, ...] -> [L, B*K, ...]
        context = Prefix(per_candidate(context.k), per_candidate(context.v), per_candidate(context.mask))
        read = tokens[:, :-1]  # the last token is predicted, never read
        positions = positions_from_mask(mask[:, :-1], jnp.repeat(before, K))
        hidden = model.transformer(frozen, model.embed(frozen, read), positions, mask[:, :-1], prefix=context,
                                   adapter=adapter)[0]
        logits = jnp.concatenate([logits, model.unembed(frozen, hidden)], axis=1)  # [B*K, C, V]
    token_logp, token_greedy = logprobs_of(logits, tokens)
    loglik = jnp.sum(jnp.where(mask, token_logp, 0.0), axis=-1).reshape(B, K)
    greedy = jnp.all(token_greedy | ~mask, axis=-1).reshape(B, K)
    valid = batch["choice_valid"]
    return jnp.where(valid, loglik, _NEVER), greedy & valid


def choice_cross_entropy(loglik: Float[Array, "B K"], gold, weight) -> tuple[Float[Array, ""], Float[Array, ""]]:
    """Sum over rows of -log softmax(candidates' log-likelihoods)[gold], and the number of rows."""
    nll = jax.nn.logsumexp(loglik, axis=-1) - jnp.take_along_axis(loglik, gold[:, None], axis=-1)[:, 0]
    weight = weight.astype(jnp.float32)
    return jnp.sum(nll * weight), jnp.sum(weight)


def choice_loss(model: Model, method, inference: bool = False):
    """`loss_fn(prompt, frozen, batch, rng, step) -> (sum of per-example losses, examples)` for
    `--loss choices`: the prompt is trained to rank the gold candidate first (training/step.py's contract)."""
    def loss_fn(prompt, frozen, batch, rng, step):
        m, p = (method.inference_prompt(prompt, model, frozen) if inference and method is not None
                else (method, prompt))
        loglik, _ = choice_logprobs(model, frozen, m, p, batch, step)
        return choice_cross_entropy(loglik, batch["gold"], batch["weight"])

    return loss_fn


score_batch = jax.jit(choice_logprobs, static_argnames=("model", "method"))


def score(session, prompt, examples: list[ChoiceExample], method, batch_size: int = 32, share: bool = True
          ) -> tuple[list[list[float]], list[list[bool]]]:
    """Per example, each candidate's log-likelihood and is-greedy flag, batched; the head every
    context shares comes from the session's prompt cache."""
    contexts = [e.context for e in examples]
    S, head = session.shared_head(contexts, method, prompt, share) if examples else (0, None)
    logliks, greedys = [], []
    for start in range(0, len(examples), batch_size):
        chunk = examples[start:start + batch_size]
        batch = collate_choices(chunk, session.pad_id, batch_size, shared_len=S)
        ll, gr = score_batch(session.model, session.frozen, method, prompt,
                             {k: jnp.asarray(v) for k, v in batch.items()}, 0, head)
        ll, gr = np.asarray(ll), np.asarray(gr)
        for b, e in enumerate(chunk):
            logliks.append([float(x) for x in ll[b, :len(e.candidates)]])
            greedys.append([bool(x) for x in gr[b, :len(e.candidates)]])
    return logliks, greedys


@dataclasses.dataclass
class ChoiceMetrics:
    accuracy: float
    acc_norm: float  # by the candidate's length in UTF-8 bytes (as written, leading space included)
    predictions: list[int]
    per_class: dict[str, dict[str, int]] | None  # fixed candidates: gold / predicted / correct counts


def choice_metrics(examples: list[ChoiceExample], logliks: list[list[float]], fixed: Sequence[str] = ()
                   ) -> ChoiceMetrics:
    predictions = [int(np.argmax(ll)) for ll in logliks]
    normed = [int(np.argmax([x / utf8_length(t) for x, t in zip(ll, e.texts)])) for ll, e in zip(logliks, examples)]
    golds = [e.gold for e in examples]
    per_class = None
    if fixed:
        per_class = {c: {"gold": 0, "predicted": 0, "correct": 0} for c in fixed}
        for p, g in zip(predictions, golds):
            per_class[fixed[g]]["gold"] += 1
            per_class[fixed[p]]["predicted"] += 1
            per_class[fixed[g]]["correct"] += int(p == g)
    n = max(len(examples), 1)
    return ChoiceMetrics(sum(p == g for p, g in zip(predictions, golds)) / n,
                         sum(p == g for p, g in zip(normed, golds)) / n, predictions, per_class)


def score_choices(session, prompt, rows: list[dict], batch_size: int = 32) -> list[list[float]]:
    """Each row's candidates' log-likelihoods given its prompted context, under the session's method
    and `prompt` in its inference form (`prompt=None`: the task's written prompt in place of
    `{prompt}`). The row's candidates are its task's (`choices`, or its `choices_field` rendered
    through the target); the most likely one is the prediction."""
    hard_prompt = session.task.hard_prompt if prompt is None else None
    examples = encode_choices(session, rows, hard_prompt)
    method, prompt = (None, None) if prompt is None else session.method.inference_prompt(prompt, session.model,
                                                                                         session.frozen)
    return score(session, prompt, examples, method, batch_size)[0]
