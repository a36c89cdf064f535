"""The device programs of continuous batching (`scheduler.py`): B decode slots, each row at its
own cache index and step; resizing the slots, prefilling admitted rows, placing them, and one
decode step for every slot. Each is compiled once per bucketed shape.

Axes: B slots, n rows admitted at once, S cache slots, P head positions, V vocabulary.
"""
from __future__ import annotations

from functools import partial

import jax
import jax.numpy as jnp
from flax import struct

from jaxprompt.inference.batch import input_embeds
from jaxprompt.inference.decode import Decoding, emit, prefill, read
from jaxprompt.inference.requests import MIN_INPUT_TOKENS, MIN_NEW_TOKENS
from jaxprompt.inference.sampling import RowSampling, sample_rows
from jaxprompt.models import Prefix
from jaxprompt.precision import policy_of

BASE_SLOTS = MIN_INPUT_TOKENS + MIN_NEW_TOKENS  # cache slots of a short request: input bucket + new tokens


@struct.dataclass
class Slots:
    """The device state of B decode slots: free slots are rows that are `done`."""

    rows: Decoding  # [B]: logits, positions, steps, cache with a per-row index
    prefix: Prefix | None  # [L, B, P, G, K] float32: each slot's head, right-padded and masked
    sampling: RowSampling  # [B]: each slot's key, settings and max_tokens


# ---- device programs ----------------------------------------------------------------------------

def _fit(x: jax.Array, axis: int, n: int, fill=0) -> jax.Array:
    """`x` cut or padded (with `fill`) to n along `axis`."""
    if jnp.issubdtype(x.dtype, jax.dtypes.prng_key):
        return jax.random.wrap_key_data(_fit(jax.random.key_data(x), axis, n), impl=jax.random.key_impl(x))
    m = x.shape[axis]
    if n <= m:
        return jax.lax.slice_in_dim(x, 0, n, axis=axis)
    shape = list(x.shape)
    shape[axis] = n - m
    return jnp.concatenate([x, jnp.full(shape, fill, x.dtype)], axis)


def _cache_axis(cache_k) -> int:
    return 0 if isinstance(cache_k, tuple) else 1  # per-layer [B, S, G, K] buffers, or stacked [L, B, S, G, K]


@partial(jax.jit, static_argnames=("B", "S", "P"))
def _resize(slots: Slots, B: int, S: int, P: int) -> Slots:
    """The same slots in shape (B, S, P): rows, cache slots and head positions cut or padded (new
    slots free, new positions masked). Rows keep their slot, so running rows decode on unchanged."""
    rows, cache = slots.rows, slots.rows.cache
    a = _cache_axis(cache.k)
    kv = lambda x: _fit(_fit(x, a + 1, S), a, B)
    cache = cache.replace(k=jax.tree.map(kv, cache.k), v=jax.tree.map(kv, cache.v),
                          mask=_fit(_fit(cache.mask, 1, S, False), 0, B), positions=_fit(_fit(cache.positions, 1, S), 0, B),
                          index=_fit(cache.index, 0, B))
    rows = Decoding(_fit(rows.logits, 0, B), _fit(rows.next_pos, 0, B), _fit(rows.length, 0, B),
                    _fit(rows.done, 0, B, True), cache)
    prefix = None
    if P:
        p = slots.prefix
        if p is None:  # the first head: every slot's head empty (masked)
            c = jax.tree.leaves(cache.k)
            L, (G, K) = (len(c) if a == 0 else c[0].shape[0]), c[0].shape[-2:]
            p = Prefix(jnp.zeros((L, B, P, G, K), jnp.float32), jnp.zeros((L, B, P, G, K), jnp.float32),
                       jnp.zeros((L, B, P), bool))
        prefix = Prefix(_fit(_fit(p.k, 2, P), 1, B), _fit(_fit(p.v, 2, P), 1, B), _fit(_fit(p.mask, 2, P, False), 1, B))
    return Slots(rows, prefix, jax.tree.map(lambda x: _fit(x, 0, B), slots.sampling))


def empty_slots(model, params: dict, B: int, S: int, P: int) -> Slots:
    """B free slots of S cache slots (per-row index) and P head positions."""
    c = model.config
    per_layer = isinstance(params[model.arch.stack_key], tuple)
    dtype = policy_of(params).compute_dtype
    cache = model.init_cache(B, S, dtype, per_layer=per_layer, per_row=True)
    rows = Decoding(jnp.zeros((B, c.vocab_size), jnp.float32), jnp.zeros(B, jnp.int32), jnp.zeros(B, jnp.int32),
                    jnp.ones(B, bool), cache)
    prefix = None
    if P:
        shape = (c.n_layers, B, P, c.n_kv_heads, c.head_dim)
        prefix = Prefix(jnp.zeros(shape, jnp.float32), jnp.zeros(shape, jnp.float32), jnp.zeros(shape[:3], bool))
    sampling = RowSampling(keys=jax.random.split(jax.random.key(0), B), temperature=jnp.zeros(B),
                           top_k=jnp.zeros(B, jnp.int32), top_p=jnp.ones(B), max_tokens=jnp.zeros(B, jnp.int32))
    return Slots(rows, prefix, sampling)


_empty = jax.jit(empty_slots, static_argnames=("model", "B", "S", "P"))


@partial(jax.jit, static_argnames=("model", "S"))
def _prefill(model, params: dict, batch: dict, S: int) -> Decoding:
    """n new rows read into a fresh cache of S slots, each row's index after its input."""
    n = batch["tokens"].shape[0]
    per_layer = isinstance(params[model.arch.stack_key], tuple)
    cache = model.init_cache(n, S, policy_of(params).compute_dtype, per_layer=per_layer)
    rows = prefill(model, params, input_embeds(model, params, batch), batch["mask"], cache, batch["start"],
                   batch["prefix"], None)
    return rows.replace(cache=rows.cache.replace(index=jnp.full(n, rows.cache.index)))


@partial(jax.jit, donate_argnames=("slots",))
def _place(slots: Slots, fresh: Decoding, prefix: Prefix | None, sampling: RowSampling, where: jax.Array) -> Slots:
    """Rows `fresh` written into slots `where` [n] (an index B or past it: a padding row, dropped)."""
    def put(old, new, axis=0):
        return old.at[(slice(None),) * axis + (where,)].set(new.astype(old.dtype), mode="drop")

    rows, cache, new = slots.rows, slots.rows.cache, fresh.cache
    a = _cache_axis(cache.k)
    cache = cache.replace(k=jax.tree.map(lambda o, x: put(o, x, a), cache.k, new.k),
                          v=jax.tree.map(lambda o, x: put(o, x, a), cache.v, new.v),
                          mask=put(cache.mask, new.mask), positions=put(cache.positions, new.positions),
                          index=put(cache.index, new.index))
    rows = Decoding(put(rows.logits, fresh.logits), put(rows.next_pos, fresh.next_pos), put(rows.length, fresh.length),
                    put(rows.done, fresh.done), cache)
    heads = slots.prefix
    if heads is not None:
        heads = Prefix(put(heads.k, prefix.k, 1), put(heads.v, prefix.v, 1), put(heads.mask, prefix.mask, 1))
    old = slots.sampling
    sampling = RowSampling(old.keys.at[where].set(sampling.keys, mode="drop"),
                           put(old.temperature, sampling.temperature), put(old.top_k, sampling.top_k),
                           put(old.top_p, sampling.top_p), put(old.max_tokens, sampling.max_tokens))
    return Slots(rows, heads, sampling)


@partial(jax.jit, static_argnames=("model", "eos_token_id", "pad"), donate_argnames=("slots",))
def _step(model, params: dict, slots: Slots, eos_token_id: int | None, pad: int):
    """One iteration: every running slot emits a token and reads it. Returns (tokens [B], done [B], slots)."""
    rows = slots.rows
    drawn = sample_rows(rows.logits, rows.length, slots.sampling)
    token, rows = emit(rows, drawn, max_positions=model.config.max_positions, eos_token_id=eos_token_id, pad=pad,
                       max_tokens=slots.sampling.max_tokens)
    return token, rows.done, slots.replace(rows=read(model, params, rows, token, slots.prefix, None))


PROGRAMS = (_empty, _resize, _prefill, _place, _step)


def compiled_programs() -> int:
    """How many programs the scheduler has compiled (all shapes)."""
    return sum(f._cache_size() for f in PROGRAMS)
