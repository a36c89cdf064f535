"""Attention over [prefix | cache | current] keys: grouped-query heads, a sliding window,
soft-capped logits, LLaMA-Adapter's gated adaption prompts; the KV cache, prefix keys/values, and
the masks that say which key each query may read.

Axes (see docs/architecture.md): B batch, T current tokens, S key slots, P prefix length,
H query heads, G key/value heads (H = G * R), K head width, D model width, L layers.
"""
from __future__ import annotations

from typing import Callable, NamedTuple

import jax
import jax.numpy as jnp
from flax import struct
from jaxtyping import Array, Bool, Float, Int

from jaxprompt.models.layers.fused import choose, fused_attention, unsupported

_MASKED = -1e30  # finite, so a fully masked (padding) query row gives a uniform softmax, not NaN



# ---- keys/values beyond the current tokens ---------------------------------------------------

@struct.dataclass
class KVCache:
    """Keys/values of every layer for incremental decoding, in fixed-size slots.

    Slots are written in time order, so "causal" is slot order; `mask` marks slots holding a real
    (non-padding) token and `positions` their position ids (sliding windows compare positions).
    """

    k: Float[Array, "L B S G K"]
    v: Float[Array, "L B S G K"]
    mask: Bool[Array, "B S"]
    positions: Int[Array, "B S"]
    index: Int[Array, ""] | Int[Array, "B"]  # next slot to write: one for the batch, or each row's own

    @classmethod
    def empty(cls, n_layers: int, batch: int, slots: int, n_kv_heads: int, head_dim: int, dtype,
              per_layer: bool = False, per_row: bool = False) -> "KVCache":
        """`per_layer`: k and v as tuples of L separate [B, S, G, K] buffers (for unstacked layers).
        `per_row`: each row writes at its own index (rows admitted at different steps, `scheduler`)."""
        shape = (batch, slots, n_kv_heads, head_dim)
        if per_layer:
            k = tuple(jnp.zeros(shape, dtype) for _ in range(n_layers))
            v = tuple(jnp.zeros(shape, dtype) for _ in range(n_layers))
        else:
            k, v = jnp.zeros((n_layers, *shape), dtype), jnp.zeros((n_layers, *shape), dtype)
        return cls(k=k, v=v, mask=jnp.zeros((batch, slots), bool), positions=jnp.zeros((batch, slots), jnp.int32),
                   index=jnp.zeros((batch,) if per_row else (), jnp.int32))

    @property
    def slots(self) -> int:
        return self.mask.shape[1]


def write_slots(buffer: Float[Array, "B S ..."], new: Float[Array, "B T ..."],
                index: Int[Array, ""] | Int[Array, "B"]) -> Float[Array, "B S ..."]:
    """`new` written into slots index..index+T-1 of every row (a per-row index: each row at its own)."""
    new = new.astype(buffer.dtype)
    if jnp.ndim(index) == 0:
        return jax.lax.dynamic_update_slice_in_dim(buffer, new, index, axis=1)
    return jax.vmap(lambda b, n, i: jax.lax.dynamic_update_slice_in_dim(b, n, i, axis=0))(buffer, new, index)


@struct.dataclass
class Prefix:
    """Keys/values (per key/value head) that queries attend to before their own tokens, per layer.

    They hold positions 0..P-1: real tokens after a prefix are numbered from P, as PEFT numbers them.
    Prefix tuning learns them; a shared prompt computes them once at batch size 1 (`Bp == 1`
    broadcasts over the batch). `mask[l]` false hides a prefix slot in layer l, which is how "only
    the top k layers" is expressed.
    """

    k: Float[Array, "L Bp P G K"]
    v: Float[Array, "L Bp P G K"]
    mask: Bool[Array, "L Bm P"]

    @property
    def length(self) -> int:
        return self.k.shape[2]


@struct.dataclass
class Adapter:
    """LLaMA-Adapter's adaption prompts (Zhang et al. 2023, "LLaMA-Adapter"): per layer, A learned
    vectors of the model width that the layer's queries read through the layer's own key/value
    projections, in a softmax of their own, scaled by a zero-initialised gate. A layer whose gate is
    0 computes exactly what it computes without an adapter.
    """

    prompt: Float[Array, "L A D"]
    gate: Float[Array, "L"]


# ---- attention --------------------------------------------------------------------------------

class AttentionSpec(NamedTuple):
    """What differs between architectures' attention beyond shapes (a static constant under jit)."""

    scale: float  # multiplies q.k: 1/sqrt(K), or Gemma 2's query_pre_attn_scalar ** -0.5
    softcap: float | None = None


class LayerInputs(NamedTuple):
    """What one layer's attention needs beside its own q/k/v (sliced per layer by the scan)."""

    key_mask: Bool[Array, "B T S"]
    cache_k: Float[Array, "B S G K"] | None
    cache_v: Float[Array, "B S G K"] | None
    cache_index: Int[Array, ""] | Int[Array, "B"] | None
    prefix_k: Float[Array, "Bp P G K"] | None
    prefix_v: Float[Array, "Bp P G K"] | None
    prefix_mask: Bool[Array, "B T P"] | None
    rotary: tuple[Array, Array] | None  # cos, sin of the current tokens' positions
    adapter: tuple[Array, Array] | None = None  # this layer's adaption prompt [A, D] and gate []
    implementation: str = "einsum"  # "einsum", or a kernel of `fused.py` ("xla", "cudnn"), resolved


def _scores(q: Float[Array, "B T G R K"], k: Float[Array, "B S G K"], spec: AttentionSpec
            ) -> Float[Array, "B G R T S"]:
    s = jnp.einsum("btgrk,bsgk->bgrts", q, k, preferred_element_type=jnp.float32)
    if spec.softcap is not None:  # Gemma 2: logits squashed into (-cap, cap) before masking
        s = spec.softcap * jnp.tanh(s / spec.softcap)
    return s


def attend(
    q: Float[Array, "B T H K"], k: Float[Array, "B T G K"], v: Float[Array, "B T G K"], ctx: LayerInputs,
    spec: AttentionSpec,
) -> tuple[Float[Array, "B T H K"], tuple[Array, Array] | None]:
    """Scaled dot-product attention of q over [prefix | cache | current] keys.

    Grouped-query attention (Ainslie et al. 2023): query head h reads key/value head h // R, as
    transformers' `repeat_kv` pairs them. Returns the output and, with a cache, this layer's
    updated cache slots. `ctx.implementation` other than "einsum": the same attention by a fused
    kernel where it can take the call (`fused.choose`).
    """
    B, T, H, K = q.shape
    G = k.shape[2]
    new_kv = None
    if ctx.cache_k is not None:
        k = write_slots(ctx.cache_k, k, ctx.cache_index)
        v = write_slots(ctx.cache_v, v, ctx.cache_index)
        new_kv = (k, v)
    implementation = choose(ctx.implementation, q.dtype, T, K, spec.softcap)
    if implementation != "einsum":
        try:
            return fused_attention(q, k, v, ctx.key_mask, ctx.prefix_k, ctx.prefix_v, ctx.prefix_mask, spec.scale,
                                   causal=ctx.cache_k is None, implementation=implementation), new_kv
        except NotImplementedError as e:  # a kernel's limit met while tracing
            unsupported(implementation, e)
    q = (q * jnp.asarray(spec.scale, q.dtype)).reshape(B, T, G, H // G, K)
    scores = jnp.where(ctx.key_mask[:, None, None], _scores(q, k, spec), _MASKED)
    if ctx.prefix_k is None:
        weights = jax.nn.softmax(scores, axis=-1).astype(v.dtype)
        out = jnp.einsum("bgrts,bsgk->btgrk", weights, v)
        return out.reshape(B, T, H, K), new_kv
    # a shared prefix (batch 1) is broadcast: on CPU XLA runs the batched einsum faster than a
    # batch-free contraction against it
    pk = jnp.broadcast_to(ctx.prefix_k.astype(q.dtype), (B, *ctx.prefix_k.shape[1:]))
    pv = jnp.broadcast_to(ctx.prefix_v.astype(v.dtype), (B, *ctx.prefix_v.shape[1:]))
    pscores = jnp.where(ctx.prefix_mask[:, None, None], _scores(q, pk, spec), _MASKED)
    weights = jax.nn.softmax(jnp.concatenate([pscores, scores], axis=-1), axis=-1).astype(v.dtype)
    P = pk.shape[1]
    out = (jnp.einsum("bgrts,bsgk->btgrk", weights[..., P:], v)
           + jnp.einsum("bgrtp,bpgk->btgrk", weights[..., :P], pv))
    return out.reshape(B, T, H, K), new_kv


def adapter_attention(q: Float[Array, "B T H K"], k: Float[Array, "A G K"], v: Float[Array, "A G K"],
                      gate: Float[Array, ""], spec: AttentionSpec) -> Float[Array, "B T H K"]:
    """The adaption prompt's share of a layer's attention output: `gate * softmax(q k_a) v_a`, its
    own softmax over the A adapter slots (unmasked, no positions), as PEFT's AdaptedAttention."""
    B, T, H, K = q.shape
    G = k.shape[1]
    q = (q * jnp.asarray(spec.scale, q.dtype)).reshape(B, T, G, H // G, K)
    scores = jnp.einsum("btgrk,agk->bgrta", q, k.astype(q.dtype), preferred_element_type=jnp.float32)
    weights = gate.astype(v.dtype) * jax.nn.softmax(scores, axis=-1).astype(v.dtype)
    return jnp.einsum("bgrta,agk->btgrk", weights, v).reshape(B, T, H, K)


PromptKV = Callable[[Float[Array, "A D"]], tuple[Float[Array, "A G K"], Float[Array, "A G K"]]]


def attention_output(out: Float[Array, "B T H K"], q: Float[Array, "B T H K"], ctx: "LayerInputs",
                     spec: AttentionSpec, project: Callable[[Array], Array], prompt_kv: PromptKV,
                     project_adapter: bool = True) -> Float[Array, "B T D"]:
    """The attention output through the output projection, plus the adaption prompt's share when
    the layer has one: the one LLaMA-Adapter branch every block uses.

    `prompt_kv` gives the layer's keys/values of the prompt (its own k/v projections). The share
    joins the attention output before the projection, `project(out + share)`, as the LLaMA-Adapter
    code adds it before `wo`: the projection's bias is added once, so a zero gate (every layer at
    initialisation, and the layers below the adapted ones) computes exactly the frozen layer.
    `project_adapter=False` is PEFT's GPT-2 form: the share added after the projection, unprojected.
    """
    B, T, H, K = out.shape
    if ctx.adapter is None:
        return project(out.reshape(B, T, H * K))
    prompt, gate = ctx.adapter
    share = adapter_attention(q, *prompt_kv(prompt), gate, spec)
    if project_adapter:
        return project((out + share).reshape(B, T, H * K))
    return project(out.reshape(B, T, H * K)) + share.reshape(B, T, H * K)


# ---- masks ------------------------------------------------------------------------------------

class Masks(NamedTuple):
    """Key masks of the current tokens, for layers with full attention and (if any) windowed ones."""

    full: Bool[Array, "B T S"]
    windowed: Bool[Array, "B T S"] | None
    prefix_full: Bool[Array, "B T P"] | None  # positions only; the per-layer prefix mask is applied in the scan
    prefix_windowed: Bool[Array, "B T P"] | None
    slot_mask: Bool[Array, "B S"] | None  # the cache's updated slot mask
    slot_positions: Int[Array, "B S"] | None


def key_masks(
    attention_mask: Bool[Array, "B T"], positions: Int[Array, "B T"], cache: KVCache | None,
    prefix_length: int, window: int | None,
) -> Masks:
    """Which keys each query sees: causal in slot order, not padding, and (windowed layers) at most
    `window - 1` positions back, as transformers' sliding-window mask (`q - k < window`)."""
    attention_mask = attention_mask.astype(bool)
    T = attention_mask.shape[1]
    if cache is None:
        causal = jnp.tril(jnp.ones((T, T), bool))
        full = causal[None] & attention_mask[:, None, :]
        slot_mask, key_positions = None, positions
    else:
        slot_mask = write_slots(cache.mask, attention_mask, cache.index)
        key_positions = write_slots(cache.positions, positions.astype(jnp.int32), cache.index)
        query_slot = jnp.reshape(cache.index, (-1, 1)) + jnp.arange(T)  # [1 or B, T]
        causal = jnp.arange(cache.slots) <= query_slot[..., None]  # [1 or B, T, S]
        full = causal & slot_mask[:, None, :]
    prefix_full = jnp.ones((*positions.shape, prefix_length), bool) if prefix_length else None
    windowed = prefix_windowed = None
    if window is not None:
        near = lambda keys: positions[:, :, None] - keys < window
        windowed = full & near(key_positions[:, None, :])
        if prefix_length:
            prefix_windowed = near(jnp.arange(prefix_length)[None, None, :])
    return Masks(full, windowed, prefix_full, prefix_windowed, slot_mask,
                 None if cache is None else key_positions)


# ---- the stack --------------------------------------------------------------------------------
