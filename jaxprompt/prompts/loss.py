"""The loss of a prompted batch: masked next-token NLL of the target tokens, in float32."""

from __future__ import annotations

import jax.numpy as jnp

from jaxprompt.prompts.forward import prompted_hidden, target_token_logprobs


def target_nll(model, frozen, hidden, batch: dict):
    """(sum of the target tokens' negative log-likelihoods, their count), from the hidden states of
    positions S: of a batch that shares a head of S positions (all positions otherwise).

    Returning the sum (not the mean) lets data-parallel replicas add their parts before dividing,
    so any split of a batch gives the same loss and gradient."""
    weights = batch["target_weight"].astype(jnp.float32)
    return -jnp.sum(target_token_logprobs(model, frozen, hidden, batch)), jnp.sum(weights)


def prompt_loss(model, method, inference: bool = False):
    """`loss_fn(prompt, frozen, batch, rng, step) -> (nll sum, target count)` for a prompt method
    (`method=None`: the text alone, e.g. a written prompt). A batch that shares a head says so
    itself (`collate`'s `shared`), so the loss cannot reuse one head for rows that do not share it.

    `inference=True` scores the method's inference form (`PromptMethod.inference_prompt`: what
    evaluation, generation and export use) instead of the training-time form at `step`; validation
    during training uses it, so the best checkpoint is the best of what will be reported.
    """
    def loss_fn(prompt, frozen, batch, rng, step):
        m, p = (method.inference_prompt(prompt, model, frozen) if inference and method is not None
                else (method, prompt))
        return target_nll(model, frozen, prompted_hidden(model, frozen, m, p, batch, step), batch)

    return loss_fn
