"""Prompt initialisers: closures over `(key, shape) -> array`, built from the embedding table."""

from __future__ import annotations

from typing import Callable, Sequence

import jax
import jax.numpy as jnp
from jaxtyping import Array, Float

Initializer = Callable[[jax.Array, tuple[int, ...]], Float[Array, "..."]]


def vocab_normal(table: Float[Array, "V E"]) -> Initializer:
    """Normal with the embedding table's per-dimension mean and std (the default)."""
    table = table.astype(jnp.float32)
    mean, std = table.mean(0), table.std(0)

    def init(key, shape):
        return mean + std * jax.random.normal(key, shape, jnp.float32)

    return init


def uniform(scale: float = 0.5) -> Initializer:
    """Uniform(-scale, scale), as in Lester et al.'s random-uniform baseline."""

    def init(key, shape):
        return jax.random.uniform(key, shape, jnp.float32, -scale, scale)

    return init


def sampled_vocab(table: Float[Array, "V E"], max_id: int | None = 5000) -> Initializer:
    """Embeddings of random vocabulary tokens (by default from the first `max_id` ids, GPT-2's most
    frequent merges), as Lester et al.'s sampled-vocabulary init."""
    table = table.astype(jnp.float32)
    n = table.shape[0] if max_id is None else min(max_id, table.shape[0])

    def init(key, shape):
        ids = jax.random.randint(key, shape[:-1], 0, n)
        return table[ids]

    return init


def from_token_ids(table: Float[Array, "V E"], ids: Sequence[int]) -> Initializer:
    """Embeddings of given tokens (e.g. the text "antonyms"), repeated or truncated to the prompt length."""
    if not len(ids):
        raise ValueError("initialisation text encodes to no tokens")
    table = table.astype(jnp.float32)
    ids = jnp.asarray(ids, jnp.int32)

    def init(key, shape):
        n = shape[-2]
        return jnp.broadcast_to(table[jnp.resize(ids, (n,))], shape)

    return init


INITIALIZERS = ("vocab_normal", "uniform", "sampled_vocab", "text")
