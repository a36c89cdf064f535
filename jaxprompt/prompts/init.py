"""Prompt initialisers: closures over `(key, shape) -> array`, built from the embedding table, and
the pool of ordinary word tokens random token inits draw from (`word_token_ids`)."""

from __future__ import annotations

import re
from typing import Callable, Sequence

import jax
import jax.numpy as jnp
from jaxtyping import Array, Float

Initializer = Callable[[jax.Array, tuple[int, ...]], Float[Array, "..."]]


def _column_stats(table: Float[Array, "V E"]) -> tuple[Float[Array, "E"], Float[Array, "E"]]:
    """Per-dimension mean and std, accumulated in float32 without a float32 copy of the table: two
    programs, each casting inside its one reduction. (In one program XLA's CPU backend computed
    the cast table once for both reductions: a 1.05 GB buffer for Llama-3.2-1B's in bf16.)"""
    mean = _column_mean(table)
    return mean, _column_std(table, mean)


@jax.jit
def _column_mean(table: Float[Array, "V E"]) -> Float[Array, "E"]:
    return jnp.mean(table.astype(jnp.float32), 0)


@jax.jit
def _column_std(table: Float[Array, "V E"], mean: Float[Array, "E"]) -> Float[Array, "E"]:
    return jnp.sqrt(jnp.mean(jnp.square(table.astype(jnp.float32) - mean), 0))


def vocab_normal(table: Float[Array, "V E"]) -> Initializer:
    """Normal with the embedding table's per-dimension mean and std (the default), accumulated in
    float32 without a float32 copy of the table."""
    mean, std = _column_stats(table)

    def init(key, shape):
        return mean + std * jax.random.normal(key, shape, jnp.float32)

    return init


def uniform(scale: float = 0.5) -> Initializer:
    """Uniform(-scale, scale), as in Lester et al.'s random-uniform baseline."""

    def init(key, shape):
        return jax.random.uniform(key, shape, jnp.float32, -scale, scale)

    return init


def sample_ids(key: jax.Array, shape: tuple[int, ...], pool: Sequence[int], vocab_size: int,
               max_id: int = 5000) -> jax.Array:
    """Random token ids of `shape`: drawn from `pool` (ordinary word tokens, `word_token_ids`), or,
    without one, from the first `max_id` ids (GPT-2's most frequent merges; on other vocabularies
    those may be byte or control tokens, so callers that know the tokenizer pass a pool)."""
    if len(pool):
        return jnp.asarray(pool, jnp.int32)[jax.random.randint(key, shape, 0, len(pool))]
    return jax.random.randint(key, shape, 0, min(max_id, vocab_size))


def sampled_vocab(table: Float[Array, "V E"], pool: Sequence[int] = ()) -> Initializer:
    """Embeddings of random vocabulary tokens (from `pool`, see `sample_ids`), as Lester et al.'s
    sampled-vocabulary init. Only the drawn rows are cast to float32."""

    def init(key, shape):
        return table[sample_ids(key, shape[:-1], pool, table.shape[0])].astype(jnp.float32)

    return init


_BYTE_TOKEN = re.compile(r"^<0x[0-9A-Fa-f]{2}>$")  # SentencePiece byte fallback (Llama-2, Mistral, Gemma)


def word_token_ids(tokenizer, limit: int = 5000) -> tuple[int, ...]:
    """The first `limit` ids (in id order: BPE and SentencePiece vocabularies put frequent pieces
    first) that are ordinary words of this vocabulary: at least two letters once decoded, never an
    added/special/control token, a byte token (`<0x41>`, or byte-level BPE's 256 single bytes) or
    an unused slot (`<unused7>`, which decodes to non-letters)."""
    backend = tokenizer.backend
    added = set(backend.get_added_tokens_decoder())
    out = []
    for i in range(backend.get_vocab_size(with_added_tokens=True)):
        if i in added:
            continue
        piece = backend.id_to_token(i)
        if piece is None or _BYTE_TOKEN.match(piece):
            continue
        text = tokenizer.decode([i]).strip()
        if len(text) >= 2 and text.isalpha():
            out.append(i)
            if len(out) == limit:
                break
    return tuple(out)


def from_token_ids(table: Float[Array, "V E"], ids: Sequence[int]) -> Initializer:
    """Embeddings of given tokens (e.g. the text "antonyms"), repeated or truncated to the prompt length."""
    if not len(ids):
        raise ValueError("initialisation text encodes to no tokens")
    ids = jnp.asarray(ids, jnp.int32)

    def init(key, shape):
        n = shape[-2]
        return jnp.broadcast_to(table[jnp.resize(ids, (n,))].astype(jnp.float32), shape)

    return init

