"""Running the frozen model with a prompt: embed -> insert prompt -> transformer.

`shared_len > 0` computes the first `shared_len` positions (virtual tokens and fixed template text,
identical for every example of a right-padded batch) once at batch size 1 (`shared_head`); every
example then attends to those keys/values. Gradients flow back to the prompt through them. At
inference the head can be computed once and passed in (see prompt_cache.py).
"""

from __future__ import annotations

import jax
import jax.numpy as jnp
from jaxtyping import Array, Float

from jaxprompt.models import Model, Prefix, positions_from_mask
from jaxprompt.precision import policy_of
from jaxprompt.prompts.base import PromptMethod
from jaxprompt.prompts.insert import insert_batch


def prompt_inputs(model: Model, frozen: dict, method: PromptMethod | None, prompt: dict | None, batch: dict,
                  step=0) -> tuple[Float[Array, "B T E"], Prefix | None]:
    """Input embeddings with virtual tokens in place, and the prefix keys/values (prefix methods).

    `method=None` runs the plain text (a written prompt is already in the tokens).
    """
    policy = policy_of(frozen)
    embeds = model.embed(frozen, batch["tokens"])
    if method is None:
        return embeds, None
    if method.kind == "embeddings":
        virtual = method.batch_virtual_tokens(prompt, model, frozen, step, batch["task_id"])
        return insert_batch(embeds, policy.cast_prompt_in(virtual), batch["slots"]), None
    k, v, layer_mask = method.batch_prefix(prompt, model, frozen, step, batch["task_id"])
    mask = jnp.broadcast_to(layer_mask[:, None, None], (k.shape[0], 1, k.shape[2]))
    return embeds, Prefix(policy.cast_prompt_in(k), policy.cast_prompt_in(v), mask)


def shared_head(model: Model, frozen: dict, method: PromptMethod | None, prompt: dict | None, head: dict,
                step=0, prefix: Prefix | None = None) -> Prefix:
    """Keys/values of a head sequence (batch 1, no padding) that every example shares.

    Includes the method's own prefix keys/values (prefix tuning) in front, so the result is all an
    example needs to attend to. `prefix` continues from already computed keys/values of the head's
    first positions (the on-disk prompt cache), so only the new positions cost compute.
    """
    embeds, method_prefix = prompt_inputs(model, frozen, method, prompt, head, step)
    done = 0
    if prefix is not None:
        done = prefix.length - (0 if method_prefix is None else method_prefix.length)
        embeds = embeds[:, done:]
    S = head["tokens"].shape[1]
    start = 0 if method_prefix is None else method_prefix.length
    cache = model.init_cache(1, S, embeds.dtype)
    if prefix is not None and done:
        k_done, v_done = prefix.k[:, :, prefix.length - done:], prefix.v[:, :, prefix.length - done:]
        cache = cache.replace(k=cache.k.at[:, :, :done].set(k_done.astype(cache.k.dtype)),
                              v=cache.v.at[:, :, :done].set(v_done.astype(cache.v.dtype)),
                              mask=cache.mask.at[:, :done].set(True),
                              positions=cache.positions.at[:, :done].set(start + jnp.arange(done)),
                              index=jnp.int32(done))
    mask = jnp.ones((1, S - done), bool)
    _, cache = model.transformer(frozen, embeds, positions_from_mask(mask, start + done), mask, cache, method_prefix)
    shared = Prefix(cache.k, cache.v, jnp.ones((cache.k.shape[0], 1, S), bool))
    if method_prefix is not None:
        shared = jax.tree.map(lambda a, b: jnp.concatenate([a.astype(b.dtype), b], axis=2), method_prefix, shared)
    return shared


def head_of(batch: dict, shared_len: int) -> dict:
    return {k: batch[k][:1, :shared_len] for k in ("tokens", "slots")} | {"task_id": batch["task_id"][:1]}


def rest_of(batch: dict, shared_len: int) -> dict:
    return {k: v[:, shared_len:] if k in ("tokens", "slots", "mask") else v for k, v in batch.items()}


def prompted_hidden(
    model: Model, frozen: dict, method: PromptMethod | None, prompt: dict | None, batch: dict, step=0,
    shared_len: int = 0, head: Prefix | None = None,
) -> Float[Array, "B T-shared_len E"]:
    """Final hidden states of positions `shared_len:` (all positions when nothing is shared).

    `head`: the shared head's keys/values if already computed (else computed here, differentiably).
    """
    if shared_len == 0:
        embeds, prefix = prompt_inputs(model, frozen, method, prompt, batch, step)
        start = 0 if prefix is None else prefix.length
        return model.transformer(frozen, embeds, positions_from_mask(batch["mask"], start), batch["mask"],
                                 prefix=prefix)[0]
    if head is None:
        head = shared_head(model, frozen, method, prompt, head_of(batch, shared_len), step)
    rest = rest_of(batch, shared_len)
    # the rest's virtual tokens (if any) are inserted; prefix keys/values are already in `head`
    embeds = prompt_inputs(model, frozen, method, prompt, rest, step)[0] if method is not None \
        and method.kind == "embeddings" else model.embed(frozen, rest["tokens"])
    positions = positions_from_mask(rest["mask"], head.length)
    return model.transformer(frozen, embeds, positions, rest["mask"], prefix=head)[0]
