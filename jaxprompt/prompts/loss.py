"""Masked next-token cross-entropy, in fp32."""

from __future__ import annotations

import jax
import jax.numpy as jnp
from jaxtyping import Array, Float, Int

from jaxprompt.prompts.forward import prompted_hidden


def nll_sum(
    logits: Float[Array, "... V"], targets: Int[Array, "..."], weights: Float[Array, "..."]
) -> tuple[Float[Array, ""], Float[Array, ""]]:
    """Sum of weighted negative log-likelihoods of `targets`, and the sum of weights.

    Returning the sum (not the mean) lets data-parallel replicas add their parts before dividing,
    so any split of a batch gives the same loss and gradient.
    """
    logits = logits.astype(jnp.float32)
    target_logits = jnp.take_along_axis(logits, targets[..., None], axis=-1)[..., 0]
    nll = jax.nn.logsumexp(logits, axis=-1) - target_logits
    weights = weights.astype(jnp.float32)
    return jnp.sum(nll * weights), jnp.sum(weights)


def target_nll(model, frozen, hidden, batch: dict, offset: int = 0):
    """NLL of the batch's target tokens from hidden states of positions `offset:`.

    Logits are computed only at the positions that predict target tokens ([B, K] instead of
    [B, T]): with a 50k vocabulary that is most of the work of a short-example forward pass.
    """
    index = batch["target_index"]
    before = jnp.maximum(index - 1 - offset, 0)  # the position whose output predicts the target
    h = jnp.take_along_axis(hidden, before[..., None], axis=1)
    logits = model.unembed(frozen, h)
    targets = jnp.take_along_axis(batch["tokens"], index, axis=1)
    return nll_sum(logits, targets, batch["target_weight"])


def prompt_loss(model, method, shared_len: int = 0, inference: bool = False):
    """`loss_fn(prompt, frozen, batch, rng, step) -> (nll sum, target count)` for a prompt method
    (`method=None`: the text alone, e.g. a written prompt).

    `inference=True` scores the method's inference form (`PromptMethod.inference_prompt`: what
    evaluation, generation and export use) instead of the training-time form at `step`; validation
    during training uses it, so the best checkpoint is the best of what will be reported.
    """
    def loss_fn(prompt, frozen, batch, rng, step):
        m, p = (method.inference_prompt(prompt, model, frozen) if inference and method is not None
                else (method, prompt))
        hidden = prompted_hidden(model, frozen, m, p, batch, step, shared_len)
        return target_nll(model, frozen, hidden, batch, shared_len)

    return loss_fn
