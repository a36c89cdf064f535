"""Running the frozen model with a prompt: embed -> insert prompt -> transformer.

`shared_len > 0` computes the first `shared_len` positions (virtual tokens and fixed template text,
identical for every example of a right-padded batch) once at batch size 1; every example then
attends to those keys/values. Gradients flow back to the prompt through them.
"""

from __future__ import annotations

import jax
import jax.numpy as jnp
from jaxtyping import Array, Float

from jaxprompt.models import Model, Prefix, positions_from_mask
from jaxprompt.precision import policy_of
from jaxprompt.prompts.base import PromptMethod
from jaxprompt.prompts.insert import insert_batch
from jaxprompt.prompts.multitask import MultiTask


def prompt_inputs(model: Model, frozen: dict, method: PromptMethod | None, prompt: dict | None, batch: dict,
                  step=0) -> tuple[Float[Array, "B T E"], Prefix | None]:
    """Input embeddings with virtual tokens in place, and the prefix keys/values (prefix methods).

    `method=None` runs the plain text (a written prompt is already in the tokens).
    """
    policy = policy_of(frozen)
    embeds = model.embed(frozen, batch["tokens"])
    if method is None:
        return embeds, None
    multitask = isinstance(method, MultiTask)
    if method.kind == "embeddings":
        virtual = method.virtual_tokens(prompt, model, frozen, step)
        if multitask:
            virtual = virtual[batch["task_id"]]  # [B, N, E]
        return insert_batch(embeds, policy.cast_prompt_in(virtual), batch["slots"]), None
    k, v, layer_mask = method.prefix(prompt, model, frozen, step)
    if multitask:  # [tasks, L, P, H, K] -> [L, B, P, H, K]
        k, v = (x[batch["task_id"]].swapaxes(0, 1) for x in (k, v))
    else:
        k, v = k[:, None], v[:, None]
    mask = jnp.broadcast_to(layer_mask[:, None, None], (k.shape[0], 1, k.shape[2]))
    return embeds, Prefix(policy.cast_prompt_in(k), policy.cast_prompt_in(v), mask)


def prompted_hidden(
    model: Model, frozen: dict, method: PromptMethod | None, prompt: dict | None, batch: dict, step=0,
    shared_len: int = 0,
) -> Float[Array, "B T-shared_len E"]:
    """Final hidden states of positions `shared_len:` (all positions when nothing is shared)."""
    embeds, prefix = prompt_inputs(model, frozen, method, prompt, batch, step)
    mask = batch["mask"]
    start = 0 if prefix is None else prefix.length
    if shared_len == 0:
        return model.transformer(frozen, embeds, positions_from_mask(mask, start), mask, prefix=prefix)[0]
    S = shared_len
    head_mask = mask[:1, :S]
    cache = model.init_cache(1, S, embeds.dtype)
    _, cache = model.transformer(frozen, embeds[:1, :S], positions_from_mask(head_mask, start), head_mask,
                                 cache, prefix)
    shared = Prefix(cache.k, cache.v, jnp.broadcast_to(head_mask[None], (cache.k.shape[0], 1, S)))
    if prefix is not None:
        shared = jax.tree.map(lambda a, b: jnp.concatenate([a, b], axis=2), prefix, shared)
    rest = mask[:, S:]
    positions = positions_from_mask(rest, start + jnp.sum(head_mask, dtype=jnp.int32))
    return model.transformer(frozen, embeds[:, S:], positions, rest, prefix=shared)[0]
