"""Choosing the next token: greedy, or sampled with temperature, top-k and top-p.

`RowSampling` holds per-row settings and keys, for batches that mix requests: a row's tokens
depend on its own key, step and settings only, never on what shares its batch.
"""
from __future__ import annotations

import dataclasses

import jax
import jax.numpy as jnp
from flax import struct
from jaxtyping import Array, Float, Int

from jaxprompt.models.model_config import ConfigError


@dataclasses.dataclass(frozen=True)
class Sampling:
    """temperature 0 is greedy; top_k 0 and top_p 1 disable those filters."""

    temperature: float = 0.0
    top_k: int = 0
    top_p: float = 1.0

    @property
    def greedy(self) -> bool:
        return self.temperature == 0.0


class SamplingError(ConfigError):
    """Sampling options this model cannot honour."""


def sample_token(logits: Float[Array, "B V"], rng: jax.Array, sampling: Sampling) -> Int[Array, "B"]:
    V = logits.shape[-1]  # static: refused while tracing, before anything runs
    if sampling.top_k > V:
        raise SamplingError(f"top-k {sampling.top_k} is more than the model's vocabulary of {V} tokens; "
                            f"use 0 (no top-k filter) to {V}")
    if sampling.greedy:
        return jnp.argmax(logits, axis=-1).astype(jnp.int32)
    logits = logits / sampling.temperature
    if sampling.top_k:
        kth = jax.lax.top_k(logits, sampling.top_k)[0][:, -1:]
        logits = jnp.where(logits < kth, -jnp.inf, logits)
    if sampling.top_p < 1.0:
        sorted_logits = jnp.sort(logits, axis=-1)[:, ::-1]
        probs = jax.nn.softmax(sorted_logits, axis=-1)
        # keep the smallest set whose mass reaches top_p (the top token always stays)
        keep = jnp.cumsum(probs, axis=-1) - probs < sampling.top_p
        threshold = jnp.min(jnp.where(keep, sorted_logits, jnp.inf), axis=-1, keepdims=True)
        logits = jnp.where(logits < threshold, -jnp.inf, logits)
    return jax.random.categorical(rng, logits, axis=-1).astype(jnp.int32)


@struct.dataclass
class RowSampling:
    """Sampling settings per row, for a batch mixing requests: a row's tokens depend on its own
    key and settings only, never on what shares its batch. Temperature 0 is greedy; top_k 0 and
    top_p 1 disable those filters."""

    keys: jax.Array  # [B] PRNG keys
    temperature: Float[Array, "B"]
    top_k: Int[Array, "B"]
    top_p: Float[Array, "B"]
    max_tokens: Int[Array, "B"] | None = None  # each row stops after this many tokens (None: max_new_tokens)


def sample_rows(logits: Float[Array, "B V"], step: Int[Array, ""] | Int[Array, "B"], rows: RowSampling
                ) -> Int[Array, "B"]:
    """Token `step` of every row (one step for all, or each row's own) under its own settings
    (greedy rows: the argmax, as `sample_token`). Row b's draw depends on its key and step only."""
    greedy = jnp.argmax(logits, axis=-1).astype(jnp.int32)

    def sample():
        scaled = logits / jnp.where(rows.temperature > 0, rows.temperature, 1.0)[:, None]
        ordered = -jnp.sort(-scaled, axis=-1)
        kth = jnp.take_along_axis(ordered, jnp.clip(rows.top_k - 1, 0, logits.shape[-1] - 1)[:, None], axis=-1)
        scaled = jnp.where((rows.top_k[:, None] > 0) & (scaled < kth), -jnp.inf, scaled)
        ordered = jnp.where((rows.top_k[:, None] > 0) & (ordered < kth), -jnp.inf, ordered)
        probs = jax.nn.softmax(ordered, axis=-1)
        keep = jnp.cumsum(probs, axis=-1) - probs < rows.top_p[:, None]  # the top token always stays
        threshold = jnp.min(jnp.where(keep, ordered, jnp.inf), axis=-1, keepdims=True)
        scaled = jnp.where(scaled < threshold, -jnp.inf, scaled)
        keys = jax.vmap(jax.random.fold_in)(rows.keys, jnp.broadcast_to(step, rows.temperature.shape))
        drawn = jax.vmap(jax.random.categorical)(keys, scaled).astype(jnp.int32)
        return jnp.where(rows.temperature > 0, drawn, greedy)

    return jax.lax.cond(jnp.any(rows.temperature > 0), sample, lambda: greedy)
