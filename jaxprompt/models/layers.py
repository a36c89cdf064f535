"""Layers shared by GPT-2 and OPT: layer norm, dense, causal attention with a key/value cache and
an optional prefix of extra keys/values, and the scanned decoder stack."""

from __future__ import annotations

import math
from typing import Callable, NamedTuple

import jax
import jax.numpy as jnp
from flax import struct
from jaxtyping import Array, Bool, Float, Int

_MASKED = -1e30  # finite, so a fully masked (padding) query row gives a uniform softmax, not NaN


def layer_norm(x: Float[Array, "... D"], p: dict | None, eps: float) -> Float[Array, "... D"]:
    x32 = x.astype(jnp.float32)
    mean = x32.mean(-1, keepdims=True)
    var = jnp.square(x32 - mean).mean(-1, keepdims=True)
    y = (x32 - mean) * jax.lax.rsqrt(var + eps)
    if p:  # OPT may have non-affine layer norms
        y = y * p["scale"].astype(jnp.float32) + p["bias"].astype(jnp.float32)
    return y.astype(x.dtype)


def dense(x: Float[Array, "... I"], p: dict) -> Float[Array, "... O"]:
    y = x @ p["kernel"]
    if "bias" in p:
        y = y + p["bias"]
    return y


_GELU_C = math.sqrt(2 / math.pi)


@jax.custom_vjp
def gelu_tanh(x):
    """GPT-2's tanh-approximated GELU. Its backward reuses the forward's tanh (residual), which on
    CPU makes a GPT-2 prompt-tuning step ~15% faster than differentiating through it."""
    return _gelu_fwd(x)[0]


def _gelu_fwd(x):
    t = jnp.tanh(_GELU_C * (x + 0.044715 * x**3))
    return 0.5 * x * (1 + t), (x, t)


def _gelu_bwd(res, g):
    x, t = res
    return (g * (0.5 * (1 + t) + 0.5 * x * (1 - t * t) * _GELU_C * (1 + 3 * 0.044715 * x * x)),)


gelu_tanh.defvjp(_gelu_fwd, _gelu_bwd)

ACTIVATIONS: dict[str, Callable] = {
    "gelu_new": gelu_tanh,
    "gelu_pytorch_tanh": gelu_tanh,
    "gelu": lambda x: jax.nn.gelu(x, approximate=False),
    "relu": jax.nn.relu,
    "silu": jax.nn.silu,
}


def activation(name: str) -> Callable:
    if name not in ACTIVATIONS:
        raise ValueError(f"unsupported activation_function {name!r}; known: {', '.join(ACTIVATIONS)}")
    return ACTIVATIONS[name]


@struct.dataclass
class KVCache:
    """Keys/values of every layer for incremental decoding, in fixed-size slots.

    Slots are written in time order, so "causal" is slot order; `mask` marks slots holding a real
    (non-padding) token.
    """

    k: Float[Array, "L B S H K"]
    v: Float[Array, "L B S H K"]
    mask: Bool[Array, "B S"]
    index: Int[Array, ""]  # next slot to write

    @classmethod
    def empty(cls, n_layers: int, batch: int, slots: int, n_heads: int, head_dim: int, dtype) -> "KVCache":
        shape = (n_layers, batch, slots, n_heads, head_dim)
        return cls(k=jnp.zeros(shape, dtype), v=jnp.zeros(shape, dtype),
                   mask=jnp.zeros((batch, slots), bool), index=jnp.zeros((), jnp.int32))

    @property
    def slots(self) -> int:
        return self.k.shape[2]


@struct.dataclass
class Prefix:
    """Keys/values that queries attend to before their own tokens, per layer.

    Prefix tuning learns them; a shared prompt computes them once at batch size 1 (`Bp == 1`
    broadcasts over the batch). `mask[l]` false hides a prefix slot in layer l,
    which is how "only the top k layers" is expressed.
    """

    k: Float[Array, "L Bp P H K"]
    v: Float[Array, "L Bp P H K"]
    mask: Bool[Array, "L Bm P"]

    @property
    def length(self) -> int:
        return self.k.shape[2]


class LayerInputs(NamedTuple):
    """What one layer's attention needs beside its own q/k/v (sliced per layer by the scan)."""

    key_mask: Bool[Array, "B T S"]
    cache_k: Float[Array, "B S H K"] | None
    cache_v: Float[Array, "B S H K"] | None
    cache_index: Int[Array, ""] | None
    prefix_k: Float[Array, "Bp P H K"] | None
    prefix_v: Float[Array, "Bp P H K"] | None
    prefix_mask: Bool[Array, "Bm P"] | None


def attend(
    q: Float[Array, "B T H K"], k: Float[Array, "B T H K"], v: Float[Array, "B T H K"], ctx: LayerInputs
) -> tuple[Float[Array, "B T H K"], tuple[Array, Array] | None]:
    """Scaled dot-product attention of q over [prefix | cache | current] keys.

    Returns the attention output and, with a cache, this layer's updated cache slots.
    """
    q = q * (1.0 / math.sqrt(q.shape[-1]))
    new_kv = None
    if ctx.cache_k is not None:
        k = jax.lax.dynamic_update_slice_in_dim(ctx.cache_k, k.astype(ctx.cache_k.dtype), ctx.cache_index, axis=1)
        v = jax.lax.dynamic_update_slice_in_dim(ctx.cache_v, v.astype(ctx.cache_v.dtype), ctx.cache_index, axis=1)
        new_kv = (k, v)
    scores = jnp.einsum("bthk,bshk->bhts", q, k, preferred_element_type=jnp.float32)
    scores = jnp.where(ctx.key_mask[:, None], scores, _MASKED)
    if ctx.prefix_k is not None:
        # a shared prefix (batch 1) is broadcast: on CPU XLA runs the batched einsum faster than a
        # batch-free contraction against it
        B = q.shape[0]
        pk = jnp.broadcast_to(ctx.prefix_k.astype(q.dtype), (B, *ctx.prefix_k.shape[1:]))
        pv = jnp.broadcast_to(ctx.prefix_v.astype(v.dtype), (B, *ctx.prefix_v.shape[1:]))
        pscores = jnp.einsum("bthk,bphk->bhtp", q, pk, preferred_element_type=jnp.float32)
        pscores = jnp.where(ctx.prefix_mask[:, None, None, :], pscores, _MASKED)
        weights = jax.nn.softmax(jnp.concatenate([pscores, scores], axis=-1), axis=-1).astype(v.dtype)
        n_prefix = pk.shape[1]
        prefix_out = jnp.einsum("bhtp,bphk->bthk", weights[..., :n_prefix], pv)
        return jnp.einsum("bhts,bshk->bthk", weights[..., n_prefix:], v) + prefix_out, new_kv
    weights = jax.nn.softmax(scores, axis=-1).astype(v.dtype)
    return jnp.einsum("bhts,bshk->bthk", weights, v), new_kv


def key_mask(
    attention_mask: Bool[Array, "B T"], cache: KVCache | None
) -> tuple[Bool[Array, "B T S"], Bool[Array, "B S"] | None]:
    """Which keys each query sees: causal in slot order and not padding.

    Returns the [B, T, S] mask and, with a cache, the cache's updated slot mask.
    """
    attention_mask = attention_mask.astype(bool)
    T = attention_mask.shape[1]
    if cache is None:
        causal = jnp.tril(jnp.ones((T, T), bool))
        return causal[None] & attention_mask[:, None, :], None
    slot_mask = jax.lax.dynamic_update_slice_in_dim(cache.mask, attention_mask, cache.index, axis=1)
    query_slot = cache.index + jnp.arange(T)
    causal = jnp.arange(cache.slots)[None, :] <= query_slot[:, None]
    return causal[None] & slot_mask[:, None, :], slot_mask


BlockFn = Callable[[dict, Array, LayerInputs], tuple[Array, tuple[Array, Array] | None]]


def decoder_stack(
    block: BlockFn,
    layers: dict,
    h: Float[Array, "B T D"],
    attention_mask: Bool[Array, "B T"],
    cache: KVCache | None = None,
    prefix: Prefix | None = None,
    remat: bool = False,
) -> tuple[Float[Array, "B T D"], KVCache | None]:
    """Runs `block` over the layer-stacked params with `lax.scan` (compile time independent of depth)."""
    mask, slot_mask = key_mask(attention_mask, cache)
    if prefix is not None and prefix.k.shape[0] != jax.tree.leaves(layers)[0].shape[0]:
        raise ValueError(f"prefix has {prefix.k.shape[0]} layers, the model {jax.tree.leaves(layers)[0].shape[0]}")

    def body(h, xs):
        p, ck, cv, pk, pv, pm = xs
        ctx = LayerInputs(mask, ck, cv, None if cache is None else cache.index, pk, pv, pm)
        h, new_kv = block(p, h, ctx)
        return h, new_kv

    if remat:
        body = jax.checkpoint(body, prevent_cse=False)
    xs = (
        layers,
        None if cache is None else cache.k,
        None if cache is None else cache.v,
        None if prefix is None else prefix.k,
        None if prefix is None else prefix.v,
        None if prefix is None else prefix.mask,
    )
    h, new_kv = jax.lax.scan(body, h, xs)
    if cache is None:
        return h, None
    k, v = new_kv
    return h, KVCache(k=k, v=v, mask=slot_mask, index=cache.index + attention_mask.shape[1])
