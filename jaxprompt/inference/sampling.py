"""How a request is decoded (`Sampling`, declared once: the CLI's flags, the HTTP API's checks and
the engine all read this declaration) and the one sampler (`sample_rows`).

`RowSampling` is `Sampling`'s per-row device form, for batches that mix requests: a row's tokens
depend on its own key, step and settings only, never on what shares its batch.
"""
from __future__ import annotations

import dataclasses

import jax
import jax.numpy as jnp
import numpy as np
from flax import struct
from jaxtyping import Array, Float, Int, UInt32

from jaxprompt.models.model_config import ConfigError
from jaxprompt.settings import AT_LEAST_0, AT_LEAST_1, Range, Settings, setting

TOP_LOGPROBS = 5  # most alternatives a request can ask for per token (OpenAI's completions limit)
MAX_STOP = 4  # most stop strings an HTTP request may give (OpenAI's limit)
SEED_BITS = 63  # seeds are int64 >= 0, as OpenAI's API declares them


@dataclasses.dataclass(frozen=True)
class Sampling(Settings):
    """How one request is decoded. temperature 0 is greedy; top_k 0 and top_p 1 disable those filters."""

    max_tokens: int = setting(16, "tokens to generate at most", range=AT_LEAST_1, flag="max-new-tokens",
                              shown_default="16; jaxprompt generate: the task's max_new_tokens")
    temperature: float = setting(0.0, "sampling temperature (0: greedy)", range=Range(0, 2))
    top_p: float = setting(1.0, "sample from the smallest set of most likely tokens with this much probability",
                           range=Range(0, 1, low_open=True))
    top_k: int = setting(0, "sample among the k most likely tokens (0: all)", range=AT_LEAST_0)
    seed: int = setting(0, "sampling seed (row j of a request samples with (seed, j))",
                        range=Range(0, 2 ** SEED_BITS - 1))
    stop: tuple[str, ...] = setting((), f"strings that end the completion, cut before the first (the HTTP API takes "
                                        f"at most {MAX_STOP}, as OpenAI's)", repeat=True)
    logprobs: int | None = setting(None, "log-probabilities of each generated token and this many alternatives "
                                         "(0: the chosen token's only)", range=Range(0, TOP_LOGPROBS))


class SamplingError(ConfigError):
    """Sampling options this model cannot honour."""


def check_vocabulary(sampling: Sampling, vocab_size: int) -> None:
    """top_k may not exceed the vocabulary (known only once the model is)."""
    if sampling.top_k > vocab_size:
        raise SamplingError(f"top-k {sampling.top_k} is more than the model's vocabulary of {vocab_size} tokens; "
                            f"use 0 (no top-k filter) to {vocab_size}")


@struct.dataclass
class RowSampling:
    """`Sampling` per row, on the device, for a batch mixing requests: a row's tokens depend on its
    own key and settings only, never on what shares its batch."""

    keys: jax.Array  # [B] PRNG keys
    temperature: Float[Array, "B"]
    top_k: Int[Array, "B"]
    top_p: Float[Array, "B"]
    max_tokens: Int[Array, "B"] | None = None  # each row stops after this many tokens (None: max_new_tokens)

    @classmethod
    def of(cls, samplings: list[Sampling], folds: list[int], rows: int) -> "RowSampling":
        """Host arrays of `rows` rows: row b samples as `samplings[b]` with key (seed, folds[b]); rows
        past the list are padding (greedy, max_tokens 0). Each program that takes them moves them to
        the device with its other inputs."""
        pad = rows - len(samplings)
        full = list(samplings) + [Sampling()] * pad
        return cls(keys=row_keys([s.seed for s in full], list(folds) + [0] * pad),
                   temperature=np.asarray([s.temperature for s in full], np.float32),
                   top_k=np.asarray([s.top_k for s in full], np.int32),
                   top_p=np.asarray([s.top_p for s in full], np.float32),
                   max_tokens=np.asarray([s.max_tokens for s in samplings] + [0] * pad, np.int32))


def row_keys(seeds: list[int], folds: list[int]) -> jax.Array:
    """Row b's sampling key: `fold_in(key(seeds[b]), folds[b])`, the batch's in one program (one
    dispatch per row cost milliseconds per admitted batch on a GPU host). A threefry key takes 32
    bits: a seed's higher bits, where it has any, are folded in as well."""
    low = np.asarray([s % 2 ** 32 for s in seeds], np.uint32)
    high = np.asarray([s >> 32 for s in seeds], np.uint32)
    return _fold_keys(low, high, np.asarray(folds, np.int32))


@jax.jit
def _fold_keys(low: UInt32[Array, "B"], high: UInt32[Array, "B"], folds: Int[Array, "B"]) -> jax.Array:
    def one(lo, hi, fold):
        key = jax.random.key(lo)
        wide = jax.random.key_data(jax.random.fold_in(key, hi))
        key = jax.random.wrap_key_data(jnp.where(hi > 0, wide, jax.random.key_data(key)))
        return jax.random.fold_in(key, fold)

    return jax.vmap(one)(low, high, folds)


def sample_rows(logits: Float[Array, "B V"], step: Int[Array, ""] | Int[Array, "B"], rows: RowSampling | None
                ) -> Int[Array, "B"]:
    """Token `step` of every row (one step for all, or each row's own) under its own settings
    (greedy rows, or every row without `rows`: the argmax). Row b's draw depends on its key and step only."""
    greedy = jnp.argmax(logits, axis=-1).astype(jnp.int32)
    if rows is None:
        return greedy

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
