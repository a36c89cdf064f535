"""Running the frozen model with a prompt: embed -> insert prompt -> transformer.

`shared_len > 0` computes the first `shared_len` positions (virtual tokens and fixed template text,
identical for every example of a right-padded batch) once at batch size 1 (`shared_head`); every
example then attends to those keys/values. Gradients flow back to the prompt through them. At
inference the head can be computed once and passed in (see cache.py).
"""
from __future__ import annotations

from typing import NamedTuple

import jax
import jax.numpy as jnp
from jaxtyping import Array, Float

from jaxprompt.models import Model, Prefix, positions_from_mask
from jaxprompt.models.layers.attention import Adapter
from jaxprompt.precision import policy_of
from jaxprompt.prompts.base import PromptMethod
from jaxprompt.prompts.insert import insert_batch


class PromptedInputs(NamedTuple):
    """What the transformer reads for a prompted batch: token embeddings with any virtual tokens in
    place, and the method's keys/values (prefix tuning) or adaption prompts (LLaMA-Adapter)."""

    embeds: Float[Array, "B T E"]
    prefix: Prefix | None = None
    adapter: Adapter | None = None


def prompt_inputs(model: Model, frozen: dict, method: PromptMethod | None, prompt: dict | None, batch: dict,
                  step=0) -> PromptedInputs:
    """The batch's inputs under `method` (`None`: the plain text, e.g. a written prompt)."""
    policy = policy_of(frozen)
    embeds = model.embed(frozen, batch["tokens"])
    if method is None:
        return PromptedInputs(embeds)
    if method.kind == "embeddings":
        virtual = method.batch_virtual_tokens(prompt, model, frozen, step, batch["task_id"])
        return PromptedInputs(insert_batch(embeds, policy.cast_prompt_in(virtual), batch["slots"]))
    if method.kind == "adaption":
        adapter = method.adapter(prompt, model, frozen)
        return PromptedInputs(embeds, adapter=jax.tree.map(policy.cast_prompt_in, adapter))
    k, v, layer_mask = method.batch_prefix(prompt, model, frozen, step, batch["task_id"])
    mask = jnp.broadcast_to(layer_mask[:, None, None], (k.shape[0], 1, k.shape[2]))
    return PromptedInputs(embeds, prefix=Prefix(policy.cast_prompt_in(k), policy.cast_prompt_in(v), mask))


def shared_head(model: Model, frozen: dict, method: PromptMethod | None, prompt: dict | None, head: dict,
                step=0, prefix: Prefix | None = None) -> Prefix:
    """Keys/values of a head sequence (batch 1, no padding) that every example shares.

    Includes the method's own prefix keys/values (prefix tuning) in front, so the result is all an
    example needs to attend to. `prefix` continues from already computed keys/values of the head's
    first positions (the on-disk prompt cache), so only the new positions cost compute.
    """
    embeds, method_prefix, adapter = prompt_inputs(model, frozen, method, prompt, head, step)
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
    _, cache = model.transformer(frozen, embeds, positions_from_mask(mask, start + done), mask, cache, method_prefix,
                                 adapter)
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
        inputs = prompt_inputs(model, frozen, method, prompt, batch, step)
        start = 0 if inputs.prefix is None else inputs.prefix.length
        return model.transformer(frozen, inputs.embeds, positions_from_mask(batch["mask"], start), batch["mask"],
                                 prefix=inputs.prefix, adapter=inputs.adapter)[0]
    if head is None:
        head = shared_head(model, frozen, method, prompt, head_of(batch, shared_len), step)
    # the rest's virtual tokens (if any) are inserted; prefix keys/values are already in `head`
    rest = prompt_inputs(model, frozen, method, prompt, rest_of(batch, shared_len), step)
    positions = positions_from_mask(batch["mask"][:, shared_len:], head.length)
    return model.transformer(frozen, rest.embeds, positions, batch["mask"][:, shared_len:], prefix=head,
                             adapter=rest.adapter)[0]
