"""Running the frozen model with a prompt: embed -> insert prompt -> transformer.

A batch that shares a head (`collate(..., shared_len=S)`) has its first S positions (virtual tokens
and fixed template text, identical for every example of a right-padded batch) computed once at
batch size 1 (`shared_head`); every example then attends to those keys/values. Gradients flow back to the prompt through them. At
inference the head can be computed once and passed in (see cache.py).
"""
from __future__ import annotations

import jax
import jax.numpy as jnp
from jaxtyping import Array, Float, Int

from jaxprompt.models import Model, Prefix, positions_from_mask
from jaxprompt.prompts.base import PromptedInputs, PromptMethod


def prompt_inputs(model: Model, frozen: dict, method: PromptMethod | None, prompt: dict | None, batch: dict,
                  step=0) -> PromptedInputs:
    """The batch's inputs under `method` (`None`: the plain text, e.g. a written prompt)."""
    embeds = model.embed(frozen, batch["tokens"])
    return PromptedInputs(embeds) if method is None else method.inputs(prompt, model, frozen, batch, embeds, step)


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


def shared_len_of(batch: dict) -> int:
    """Positions every row of `batch` shares, computed once (`collate`'s `shared`; 0 without one)."""
    return batch["shared"].shape[-1] if "shared" in batch else 0


def prompted_hidden(
    model: Model, frozen: dict, method: PromptMethod | None, prompt: dict | None, batch: dict, step=0,
    head: Prefix | None = None,
) -> Float[Array, "B T-S E"]:
    """Final hidden states of positions S: (all positions when the batch shares no head; S is the
    batch's own, `shared_len_of`).

    `head`: the shared head's keys/values if already computed (else computed here, differentiably).
    """
    S = shared_len_of(batch)
    if S == 0:
        inputs = prompt_inputs(model, frozen, method, prompt, batch, step)
        start = 0 if inputs.prefix is None else inputs.prefix.length
        return model.transformer(frozen, inputs.embeds, positions_from_mask(batch["mask"], start), batch["mask"],
                                 prefix=inputs.prefix, adapter=inputs.adapter)[0]
    if head is None:
        head = shared_head(model, frozen, method, prompt, head_of(batch, S), step)
    # the rest's virtual tokens (if any) are inserted; prefix keys/values are already in `head`
    rest = prompt_inputs(model, frozen, method, prompt, rest_of(batch, S), step)
    positions = positions_from_mask(batch["mask"][:, S:], head.length)
    return model.transformer(frozen, rest.embeds, positions, batch["mask"][:, S:], prefix=head,
                             adapter=rest.adapter)[0]


# ---- scores: one scorer behind the loss, choices, completions' logprobs and lm-eval --------------

def token_logprobs(model: Model, frozen: dict, hidden: Float[Array, "... E"], tokens: Int[Array, "..."], top: int = 0):
    """log p(token | hidden state) for each position: `logprobs_of` the model's logits there."""
    return logprobs_of(model.unembed(frozen, hidden), tokens, top)


def logprobs_of(logits: Float[Array, "... V"], tokens: Int[Array, "..."], top: int = 0):
    """log p(token) in float32 for each position, whether it is the most likely token there
    (greedy), and with `top` > 0 the `top` most likely tokens' log-probabilities and ids.

    The one scorer of jaxprompt: the training loss, evaluation's loss, choice tasks and lm-eval's
    log-likelihoods, and completions' `logprobs` all read their numbers here."""
    logits = logits.astype(jnp.float32)
    # the chosen logit less the log-normaliser: with the vocabulary sharded over devices each device
    # keeps to its share of the work (a log_softmax over [..., V] first did not: test_plan.py)
    normaliser = jax.nn.logsumexp(logits, axis=-1)
    chosen = jnp.take_along_axis(logits, tokens[..., None], axis=-1)[..., 0] - normaliser
    greedy = jnp.argmax(logits, axis=-1) == tokens
    if not top:
        return chosen, greedy
    return chosen, greedy, jax.lax.top_k(logits - normaliser[..., None], top)


def target_token_logprobs(model: Model, frozen: dict, hidden: Float[Array, "B T-S E"], batch: dict
                          ) -> Float[Array, "B K"]:
    """log p of each target token (`target_index`, weighted by `target_weight`: 0 for padding),
    from the hidden states of positions S: on. Logits are computed only at the positions that
    predict a target ([B, K], not [B, T]): with a 50k vocabulary that is most of the work of a short
    example's forward pass."""
    index = batch["target_index"]
    before = jnp.maximum(index - 1 - shared_len_of(batch), 0)  # the position whose output predicts the target
    h = jnp.take_along_axis(hidden, before[..., None], axis=1)
    targets = jnp.take_along_axis(batch["tokens"], index, axis=1)
    return token_logprobs(model, frozen, h, targets)[0] * batch["target_weight"]


def target_logprobs(model: Model, frozen: dict, method: PromptMethod | None, prompt: dict | None, batch: dict,
                    step=0) -> Float[Array, "B"]:
    """Each example's log-likelihood of its target (the sum over its target tokens) under the
    prompt: what a research loss of one's own, a ranking or a metric is built from."""
    hidden = prompted_hidden(model, frozen, method, prompt, batch, step)
    return jnp.sum(target_token_logprobs(model, frozen, hidden, batch), axis=-1)


def prompted_logits(model: Model, frozen: dict, method: PromptMethod | None, prompt: dict | None, batch: dict,
                    step=0) -> Float[Array, "B T V"]:
    """float32 logits at every position of the batch's tokens under the prompt (position t predicts
    token t + 1). Every row is computed whole: a shared head is not reused here."""
    batch = {k: v for k, v in batch.items() if k != "shared"}
    return model.unembed(frozen, prompted_hidden(model, frozen, method, prompt, batch, step)).astype(jnp.float32)
