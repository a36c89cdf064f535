"""Prompts that are (functions of) free embedding vectors: soft, relaxed one-hot, projected (PEZ)."""

from __future__ import annotations

import dataclasses

import jax
import jax.numpy as jnp
from jaxtyping import Array, Float, Int

from jaxprompt.models import Model
from jaxprompt.prompts.base import EmbeddingInit, PromptMethod
from jaxprompt.prompts.settings import PezSettings, RelaxedSettings, SoftSettings


@dataclasses.dataclass(frozen=True)
class SoftPrompt(SoftSettings, EmbeddingInit, PromptMethod):
    """Virtual token embeddings learned directly (Lester et al. 2021)."""

    def init(self, key, model: Model, frozen: dict, n_virtual: int) -> dict:
        return {"embeddings": self.initializer(model, frozen)(key, (n_virtual, model.config.d_embed))}

    def virtual_tokens(self, prompt, model, frozen, step) -> Float[Array, "N E"]:
        return prompt["embeddings"]


@dataclasses.dataclass(frozen=True)
class RelaxedPrompt(RelaxedSettings, EmbeddingInit, PromptMethod):
    """Each slot is softmax(logits / tau) over the vocabulary times the embedding table, so the prompt
    stays a mixture of real tokens; tau anneals geometrically from `tau_start` to `tau_end` over
    `anneal_steps` (the run's)."""

    def init(self, key, model: Model, frozen: dict, n_virtual: int) -> dict:
        V = model.config.vocab_size
        logits = 0.01 * jax.random.normal(key, (n_virtual, V), jnp.float32)
        if self.init_from == "text" and self.init_ids:
            ids = jnp.resize(jnp.asarray(self.init_ids, jnp.int32), (n_virtual,))
            logits = logits.at[jnp.arange(n_virtual), ids].add(self.init_logit)
        return {"logits": logits}

    def tau(self, step) -> Float[Array, ""]:
        frac = jnp.clip(jnp.asarray(step, jnp.float32) / max(self.anneal_steps, 1), 0.0, 1.0)
        return self.tau_start * (self.tau_end / self.tau_start) ** frac

    def virtual_tokens(self, prompt, model, frozen, step) -> Float[Array, "N E"]:
        return self._mixture(prompt, model, frozen, self.tau(step))

    def _mixture(self, prompt, model, frozen, tau) -> Float[Array, "N E"]:
        weights = jax.nn.softmax(prompt["logits"] / tau, axis=-1)
        # in the table's dtype with float32 accumulation (the precision policy), never a float32
        # table; a table held as bits is a CPU's, which multiplies in float32: a block at a time
        held = model.held_as_bits(frozen, "input")

        def part(rows, ids):  # the weights of these rows (none for a row counted already)
            w = weights if ids is None else jnp.where(ids >= 0, jnp.take(weights, jnp.maximum(ids, 0), axis=-1), 0.0)
            dtype = jnp.float32 if held else rows.dtype
            return jnp.einsum("nv,ve->ne", w.astype(dtype), rows.astype(dtype), preferred_element_type=jnp.float32)

        return model.over_vocabulary(frozen, part, combine="sum")

    def inference_prompt(self, prompt, model, frozen):
        """The mixture at the final temperature, as a plain soft prompt: what training ends on."""
        return SoftPrompt(length=self.length), {"embeddings": self._mixture(prompt, model, frozen, self.tau_end)}

    def tokens(self, prompt) -> Int[Array, "N"]:
        """The hard prompt it stands for: the most likely token of each slot."""
        return jnp.argmax(prompt["logits"], axis=-1)


def similarity(vectors: Float[Array, "N E"], table: Float[Array, "V E"], metric: str = "cosine"
               ) -> Float[Array, "N V"]:
    """Cosine similarity, or negative squared L2 distance: larger is nearer either way.

    One [N, E] x [E, V] product in the table's dtype (float32 accumulation) and the table's row
    norms: the program never copies, normalises or casts the table (at a 128k x 4096 vocabulary a
    float32 copy would be 2 GB per step). XLA's CPU compiler, which emulates bfloat16 products in
    float32, may still convert the table; GPU and TPU compilers multiply bfloat16 natively."""
    vectors = vectors.astype(jnp.float32)
    if metric not in ("cosine", "l2"):
        raise ValueError(f"unknown metric {metric!r}; use cosine or l2")
    row_sq = jnp.einsum("ve,ve->v", table, table, preferred_element_type=jnp.float32)  # [V], no float32 table
    if metric == "cosine":
        vectors = vectors / jnp.maximum(jnp.linalg.norm(vectors, axis=-1, keepdims=True), 1e-12)
    dots = jnp.einsum("ne,ve->nv", vectors.astype(table.dtype), table, preferred_element_type=jnp.float32)
    if metric == "cosine":
        return dots / jnp.maximum(jnp.sqrt(row_sq), 1e-12)[None]
    return -(jnp.sum(vectors**2, -1)[:, None] - 2 * dots + row_sq[None])


def nearest_tokens(vectors: Float[Array, "N E"], table: Float[Array, "V E"], metric: str = "cosine") -> Int[Array, "N"]:
    """Index of the nearest vocabulary embedding of each vector."""
    return jnp.argmax(similarity(vectors, table, metric), axis=-1)


@dataclasses.dataclass(frozen=True)
class ProjectedPrompt(PezSettings, EmbeddingInit, PromptMethod):
    """A readable hard prompt learned by gradients ("Hard Prompts Made Easy", Wen et al. 2023).

    The forward pass uses each vector's nearest vocabulary embedding; the gradient taken there
    updates the continuous vector (straight-through), so the prompt always *is* real tokens.
    """

    def init(self, key, model: Model, frozen: dict, n_virtual: int) -> dict:
        return {"embeddings": self.initializer(model, frozen)(key, (n_virtual, model.config.d_embed))}

    def virtual_tokens(self, prompt, model, frozen, step) -> Float[Array, "N E"]:
        e = prompt["embeddings"]
        projected = model.embed(frozen, self.tokens(prompt, model, frozen)).astype(jnp.float32)  # N rows
        return e + jax.lax.stop_gradient(projected - e)

    def tokens(self, prompt, model: Model, frozen: dict) -> Int[Array, "N"]:
        """The nearest vocabulary token of each vector (the table in blocks where it is held as bits)."""
        scores = model.over_vocabulary(frozen, lambda rows, _: similarity(prompt["embeddings"], rows, self.metric))
        return jnp.argmax(scores, axis=-1)

    def inference_prompt(self, prompt, model, frozen):
        """The tokens' own embeddings: the hard prompt the forward pass already uses."""
        return SoftPrompt(length=self.length), {"embeddings": model.embed(frozen, self.tokens(prompt, model, frozen))
                                                .astype(jnp.float32)}
