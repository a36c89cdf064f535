"""Layers every architecture is built from: norms, dense, activations, rotary position
embeddings, attention over [prefix | cache | current] keys with grouped-query heads, a sliding
window and soft-capping, and the scanned decoder stack.

Axes (see the README glossary): B batch, T current tokens, S key slots, P prefix length,
H query heads, G key/value heads (H = G * R), K head width, D model width, L layers.
"""

from __future__ import annotations

import contextlib
import contextvars
import math
from typing import Callable, NamedTuple

import jax
import jax.numpy as jnp
import numpy as np
from flax import struct
from jaxtyping import Array, Bool, Float, Int

_MASKED = -1e30  # finite, so a fully masked (padding) query row gives a uniform softmax, not NaN


# ---- norms -----------------------------------------------------------------------------------

def layer_norm(x: Float[Array, "... D"], p: dict | None, eps: float) -> Float[Array, "... D"]:
    """LayerNorm with fp32 statistics; `p` None (or empty) for a non-affine norm."""
    x32 = x.astype(jnp.float32)
    mean = x32.mean(-1, keepdims=True)
    var = jnp.square(x32 - mean).mean(-1, keepdims=True)
    y = (x32 - mean) * jax.lax.rsqrt(var + eps)
    if p:
        y = y * p["scale"].astype(jnp.float32) + p["bias"].astype(jnp.float32)
    return y.astype(x.dtype)


def rms_norm(x: Float[Array, "... D"], scale: Float[Array, "D"], eps: float, unit_offset: bool = False
             ) -> Float[Array, "... D"]:
    """RMSNorm (Zhang & Sennrich 2019) with fp32 statistics.

    Llama casts the normalised input back to its dtype, then multiplies by the weight; Gemma
    multiplies by `1 + weight` in fp32 and casts last (`unit_offset`). Both orders are kept so bf16
    results round as in transformers.
    """
    x32 = x.astype(jnp.float32)
    y = x32 * jax.lax.rsqrt(jnp.mean(jnp.square(x32), axis=-1, keepdims=True) + eps)
    if unit_offset:
        return (y * (1.0 + scale.astype(jnp.float32))).astype(x.dtype)
    return scale * y.astype(x.dtype)


# ---- dense and activations -------------------------------------------------------------------

def dense(x: Float[Array, "... I"], p: dict) -> Float[Array, "... O"]:
    y = x @ p["kernel"]
    if "bias" in p:
        y = y + p["bias"]
    return y


_GELU_C = math.sqrt(2 / math.pi)


@jax.custom_vjp
def gelu_tanh(x):
    """Tanh-approximated GELU (GPT-2, Gemma). Its backward reuses the forward's tanh (residual),
    which on CPU makes a GPT-2 prompt-tuning step ~15% faster than differentiating through it."""
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
        raise ValueError(f"unsupported activation {name!r}; known: {', '.join(ACTIVATIONS)}")
    return ACTIVATIONS[name]


def gated_mlp(x: Float[Array, "... D"], p: dict, act: Callable) -> Float[Array, "... D"]:
    """`down(act(gate(x)) * up(x))`: SwiGLU with SiLU, GeGLU with GELU (Shazeer 2020)."""
    return dense(act(dense(x, p["gate_proj"])) * dense(x, p["up_proj"]), p["down_proj"])


# ---- rotary position embeddings (Su et al. 2021, "RoFormer") ----------------------------------

def rotary_inv_freq(rotary_dim: int, theta: float, scaling: dict | None = None) -> np.ndarray:
    """Inverse frequencies [rotary_dim / 2] in fp32, as transformers computes them.

    `scaling` is a `rope_scaling` dict: type `default`, `linear` (positions divided by `factor`) or
    `llama3` (Llama 3.1: low frequencies divided by `factor`, a smooth ramp in between).
    """
    exponents = np.arange(0, rotary_dim, 2, dtype=np.int64).astype(np.float32) / np.float32(rotary_dim)
    inv_freq = (np.float32(1.0) / (np.float32(theta) ** exponents)).astype(np.float32)
    kind = (scaling or {}).get("rope_type", (scaling or {}).get("type", "default"))
    if kind == "default":
        return inv_freq
    factor = np.float32(scaling["factor"])
    if kind == "linear":
        return inv_freq / factor
    if kind == "llama3":
        low, high = np.float32(scaling["low_freq_factor"]), np.float32(scaling["high_freq_factor"])
        context = np.float32(scaling["original_max_position_embeddings"])
        wavelen = np.float32(2 * math.pi) / inv_freq
        scaled = np.where(wavelen > context / low, inv_freq / factor, inv_freq)
        smooth = (context / wavelen - low) / (high - low)
        smoothed = (1 - smooth) * scaled / factor + smooth * scaled
        medium = ~(wavelen < context / high) & ~(wavelen > context / low)
        return np.where(medium, smoothed, scaled).astype(np.float32)
    raise ValueError(f"unsupported rope_scaling type {kind!r}; jaxprompt supports default, linear, llama3")


def rotary_angles(positions: Int[Array, "B T"], inv_freq: np.ndarray, dtype
                  ) -> tuple[Float[Array, "B T R"], Float[Array, "B T R"]]:
    """cos and sin of position x frequency (fp32, then cast to the compute dtype as transformers does)."""
    freqs = positions.astype(jnp.float32)[..., None] * jnp.asarray(inv_freq)
    angles = jnp.concatenate([freqs, freqs], axis=-1)
    return jnp.cos(angles).astype(dtype), jnp.sin(angles).astype(dtype)


def apply_rotary(x: Float[Array, "B T N K"], cos: Float[Array, "B T R"], sin: Float[Array, "B T R"]
                 ) -> Float[Array, "B T N K"]:
    """Rotates the first R dims of each head (all of them unless the rotary is partial, GPT-NeoX),
    pairing dim i with dim i + R/2 ("rotate half", the transformers layout)."""
    R = cos.shape[-1]
    rot, rest = x[..., :R], x[..., R:]
    half = R // 2
    rotated = jnp.concatenate([-rot[..., half:], rot[..., :half]], axis=-1)
    out = rot * cos[:, :, None] + rotated * sin[:, :, None]
    return jnp.concatenate([out, rest], axis=-1) if rest.shape[-1] else out


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


class StackInputs(NamedTuple):
    """What an architecture's transformer reads besides its weights (one structure, so a family's
    transformer is `(params, inputs, config, remat)` and passes it on to `decoder_stack`)."""

    embeds: Float[Array, "B T E"]
    positions: Int[Array, "B T"]
    attention_mask: Bool[Array, "B T"]
    cache: KVCache | None = None
    prefix: Prefix | None = None
    adapter: Adapter | None = None


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
    updated cache slots.
    """
    B, T, H, K = q.shape
    G = k.shape[2]
    q = (q * jnp.asarray(spec.scale, q.dtype)).reshape(B, T, G, H // G, K)
    new_kv = None
    if ctx.cache_k is not None:
        k = write_slots(ctx.cache_k, k, ctx.cache_index)
        v = write_slots(ctx.cache_v, v, ctx.cache_index)
        new_kv = (k, v)
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

BlockFn = Callable[[dict, Array, LayerInputs], tuple[Array, tuple[Array, Array] | None]]


def as_bits(layers: dict) -> dict:
    """bf16 weights as raw 16-bit integers (a free bitcast), for a rematerialised scan.

    XLA's CPU backend computes a bf16 matmul in float32, and it converts the whole stacked weights
    before the scan's loops rather than one layer's slice inside them: a float32 copy of every
    layer, twice the bf16 weights (5.3 GB of temporaries in a Llama-3.2-1B training step). Integer
    bits cannot be converted ahead, so each layer is converted where it is used. Without remat the
    backward pass would keep each layer's weights as a residual, a copy of its own; with remat it
    keeps only the layers' inputs. Measured on that step (batch 2, 2-core CPU): temporaries 3.24
    GB against 5.19, and 6.3 s a step against 9.9 (`scripts/scale_check.py`)."""
    return jax.tree.map(lambda w: jax.lax.bitcast_convert_type(w, jnp.uint16) if w.dtype == jnp.bfloat16 else w,
                        layers)


def _viewed_in_place(w: Array, dtype) -> Array | None:
    """A single-device CPU array's buffer as `dtype` of the same width, without a copy: a numpy view
    placed back as an array of the same memory (`jax.device_put` of host memory on a CPU aliases
    it). None for any other array (a tracer, another platform, several devices)."""
    if isinstance(w, jax.core.Tracer):
        return None
    device, *others = w.devices()
    return None if others or device.platform != "cpu" else jax.device_put(np.asarray(w).view(dtype), device)


def bits_in_place(layers):
    """`as_bits` outside a compiled program and without a copy, for weights that every program then
    takes as bits (`_viewed_in_place`; other arrays are left as they are). Inside a program,
    `as_bits` of bf16 weights is a copy of every layer (2.1 GB of temporaries for Llama-3.2-1B)."""
    def one(w):
        viewed = _viewed_in_place(w, np.uint16) if w.dtype == jnp.bfloat16 else None
        return w if viewed is None else viewed

    return jax.tree.map(one, layers)


def from_bits(weights):
    """Weights (one array or a tree) back from `as_bits` (frozen weights hold no integers of their own).

    Inside a program a bitcast; outside one, a single-device CPU array is viewed back in its own
    memory, as `bits_in_place` made it (an eager bitcast would copy it)."""
    def one(w):
        if w.dtype != jnp.uint16:
            return w
        viewed = _viewed_in_place(w, jnp.bfloat16)
        return jax.lax.bitcast_convert_type(w, jnp.bfloat16) if viewed is None else viewed

    return jax.tree.map(one, weights)


# Set while a step is traced under an FSDP layout (`parallel.MeshParallel`); read by `decoder_stack`.
_GATHERED_LAYERS: contextvars.ContextVar = contextvars.ContextVar("gathered_layers", default=None)


@contextlib.contextmanager
def gathered_layers(sharding):
    """While a step is traced inside this context, each layer's weights are constrained to
    `sharding` (whole on every device) where the scan runs the layer: fully sharded data parallel
    (ZeRO-3, Rajbhandari et al. 2020), each layer gathered just before it runs and, in the backward
    pass, gathered again rather than kept: the layer is rematerialised. Recomputing the gathered
    weights alone (a checkpoint policy) was not enough: what the backward pass derives from them (a
    cast, a transpose) was then kept for every layer, 57 GiB of temporaries per device for a
    Llama-3.1-8B step on 8 devices, against 4.6 GiB with the whole layer rematerialised
    (`jaxprompt plan`, float32 proxy). Without this context, XLA's partitioner computes with the
    weight shards where they lie and moves activations instead. A context read at trace time, as
    Flax's logical axis rules are: the model's functions take no device arguments."""
    token = _GATHERED_LAYERS.set(sharding)
    try:
        yield
    finally:
        _GATHERED_LAYERS.reset(token)


def decoder_stack(
    block: BlockFn,
    layers: dict,
    h: Float[Array, "B T D"],
    inputs: StackInputs,
    remat: bool = False,
    rotary: tuple[Array, Array] | None = None,
    window: int | None = None,
    windowed_layers: tuple[bool, ...] | None = None,
) -> tuple[Float[Array, "B T D"], KVCache | None]:
    """Runs `block` over the layer-stacked params with `lax.scan` (compile time independent of depth),
    from `h` (the inputs' embeddings as the family prepares them: positions added, projected).

    `window`: sliding-window width for the layers flagged in `windowed_layers` (all when None).
    """
    attention_mask, positions, cache, prefix, adapter = (inputs.attention_mask, inputs.positions, inputs.cache,
                                                         inputs.prefix, inputs.adapter)
    n_layers = len(layers) if isinstance(layers, (tuple, list)) else jax.tree.leaves(layers)[0].shape[0]
    if prefix is not None and prefix.k.shape[0] != n_layers:
        raise ValueError(f"prefix has {prefix.k.shape[0]} layers, the model {n_layers}")
    masks = key_masks(attention_mask, positions, cache, 0 if prefix is None else prefix.length, window)
    if window is None:
        use_window = None
    else:
        flags = windowed_layers if windowed_layers is not None else (True,) * n_layers
        use_window = jnp.asarray(flags, bool)

    gathered = _GATHERED_LAYERS.get()

    def body(h, xs):
        p, ck, cv, pk, pv, pm, windowed, layer_adapter = xs
        p = from_bits(p)
        if gathered is not None:  # the layer's weights whole on every device (`gathered_layers`)
            p = jax.lax.with_sharding_constraint(p, jax.tree.map(lambda _: gathered, p))
        key_mask, prefix_mask = masks.full, masks.prefix_full
        if windowed is not None:
            key_mask = jnp.where(windowed, masks.windowed, masks.full)
            if prefix_mask is not None:
                prefix_mask = jnp.where(windowed, masks.prefix_windowed, prefix_mask)
        if prefix_mask is not None:
            prefix_mask = prefix_mask & pm[:, None, :]  # the layer's own prefix slots (top-k layers)
        ctx = LayerInputs(key_mask, ck, cv, None if cache is None else cache.index, pk, pv, prefix_mask, rotary,
                          layer_adapter)
        return block(p, h, ctx)

    remat = remat or gathered is not None
    if remat:
        body = jax.checkpoint(body, prevent_cse=False)
    if isinstance(layers, (tuple, list)):  # unstacked layers (see `unstack_layers`): an unrolled loop
        outs = []
        for i, p in enumerate(layers):
            at = lambda x: None if x is None else x[i]
            h, kv = body(h, (p, at(None if cache is None else cache.k), at(None if cache is None else cache.v),
                             at(None if prefix is None else prefix.k), at(None if prefix is None else prefix.v),
                             at(None if prefix is None else prefix.mask), at(use_window),
                             None if adapter is None else (adapter.prompt[i], adapter.gate[i])))
            outs.append(kv)
        if cache is not None:  # per-layer cache buffers stay separate (updated in place by a decode loop)
            new_kv = tuple(tuple(part) if isinstance(cache.k, tuple) else jnp.stack(part) for part in zip(*outs))
    else:
        h, new_kv = jax.lax.scan(body, h, (
            as_bits(layers) if remat else layers,
            None if cache is None else cache.k,
            None if cache is None else cache.v,
            None if prefix is None else prefix.k,
            None if prefix is None else prefix.v,
            None if prefix is None else prefix.mask,
            use_window,
            None if adapter is None else (adapter.prompt, adapter.gate),
        ))
    if cache is None:
        return h, None
    k, v = new_kv
    return h, KVCache(k=k, v=v, mask=masks.slot_mask, positions=masks.slot_positions,
                      index=cache.index + attention_mask.shape[1])
