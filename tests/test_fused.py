"""Fused attention (`layers/fused.py`, `jax.nn.dot_product_attention`) against independent
references: a float64 numpy loop over heads, and the einsum path (itself checked against
transformers in test_families.py), on a CPU with XLA's implementation of the same call. Every
feature the families use: grouped and multi-head queries, sliding windows, a shared prefix (batch
1, some slots hidden in a layer) or a per-row one, a cache written at each row's own index, left
and right padding (fully masked rows included), float32 and bf16; then each family's whole
transformer with a prefix, padding and (Llama's) adaption prompts, forward and gradient."""

from __future__ import annotations

import itertools

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from jaxprompt.models import Model, Prefix, positions_from_mask
from jaxprompt.models.layers.attention import Adapter, AttentionSpec, KVCache, LayerInputs, attend, key_masks
from jaxprompt.models.layers.fused import fallback_reason, fused_attention

B, T, K = 3, 6, 8


def reference(q, keys, values, valid, scale):
    """float64, per query head h over key/value head h // R; rows with no valid key are NaN."""
    q, keys, values = (np.asarray(x, np.float64) for x in (q, keys, values))
    H, G = q.shape[2], keys.shape[2]
    out = np.full(q.shape, np.nan)
    for b, h in itertools.product(range(q.shape[0]), range(H)):
        s = scale * q[b, :, h] @ keys[b, :, h // (H // G)].T
        s = np.where(valid[b], s, -np.inf)
        with np.errstate(invalid="ignore"):  # a row with no valid key: NaN
            w = np.exp(s - s.max(-1, keepdims=True))
        out[b, :, h] = (w / w.sum(-1, keepdims=True)) @ values[b, :, h // (H // G)]
    return out


def case(heads, window, prefix, padding, cache, dtype, seed=0, length=T):
    """(ctx for `attend`, q, k, v, and the float64 inputs of `reference`: all keys, their validity)."""
    H, G = heads
    T = length
    rng = np.random.RandomState(seed)
    q, k, v = (rng.randn(B, T, n, K).astype(np.float32) for n in (H, G, G))
    mask = np.ones((B, T), bool)
    if padding == "left":
        mask[1, :2] = False
        mask[2, :T - 1] = False  # one real token: left-padded rows with nothing to read
    else:
        mask[1, 4:] = False
        mask[2, 1:] = False
    P = 4 if prefix else 0
    start = P + (3 if cache else 0)
    positions = positions_from_mask(jnp.asarray(mask), start)
    kv_cache = None
    if cache:  # 3 slots of real tokens already written, then this call's T; rows at their own index
        S = 3 + T + 2
        kv_cache = KVCache.empty(1, B, S, G, K, jnp.float32, per_row=True)
        old_k, old_v = (rng.randn(B, 3, G, K).astype(np.float32) for _ in range(2))
        kv_cache = kv_cache.replace(k=kv_cache.k.at[0, :, :3].set(old_k), v=kv_cache.v.at[0, :, :3].set(old_v),
                                    mask=kv_cache.mask.at[:, :3].set(True),
                                    positions=kv_cache.positions.at[:, :3].set(P + np.arange(3)),
                                    index=jnp.full((B,), 3, jnp.int32))
    masks = key_masks(jnp.asarray(mask), positions, kv_cache, P, window)
    key_mask = masks.full if window is None else masks.windowed
    pk = pv = pmask = None
    if prefix:
        Bp = 1 if prefix == "shared" else B
        pk, pv = (rng.randn(Bp, P, G, K).astype(np.float32) for _ in range(2))
        layer_mask = np.array([[True, False, True, True]])  # slot 1 hidden in this layer
        pmask = (masks.prefix_full if window is None else masks.prefix_windowed) & layer_mask[:, None, :]
    cast = lambda x: None if x is None else jnp.asarray(x, dtype)
    q, k, v, pk, pv = (None if x is None else np.asarray(cast(x), np.float32) for x in (q, k, v, pk, pv))
    kv_cache = None if cache is None else kv_cache.replace(k=cast(kv_cache.k), v=cast(kv_cache.v))
    ctx = LayerInputs(key_mask, None if cache is None else cast(kv_cache.k[0]),
                      None if cache is None else cast(kv_cache.v[0]), None if cache is None else kv_cache.index,
                      cast(pk), cast(pv), pmask, None)
    keys, values, valid = k, v, np.asarray(key_mask)
    if cache:
        from jaxprompt.models.layers.attention import write_slots
        keys, values = (np.asarray(write_slots(buf[0], jnp.asarray(new), kv_cache.index))
                        for buf, new in ((kv_cache.k, k), (kv_cache.v, v)))
    if prefix:
        keys = np.concatenate([np.broadcast_to(pk, (B, *pk.shape[1:])), keys], 1)
        values = np.concatenate([np.broadcast_to(pv, (B, *pv.shape[1:])), values], 1)
        valid = np.concatenate([np.asarray(pmask), valid], -1)
    return ctx, [cast(x) for x in (q, k, v)], (q, keys, values, valid)


# every pair of features together at least once (grouped/multi-head, window, prefix, padding, cache)
CASES = [dict(heads=h, window=w, prefix=p, padding=pad, cache=c) for h, w, p, pad, c in [
    ((6, 2), None, None, "left", None), ((6, 2), 3, "shared", "right", None), ((6, 2), None, "rows", "right", "cache"),
    ((6, 2), 3, None, "left", "cache"), ((4, 4), None, "shared", "left", "cache"), ((4, 4), 3, "rows", "left", None),
    ((4, 4), None, None, "right", "cache"), ((4, 4), 3, "shared", "right", "cache"),
    ((6, 2), None, "shared", "left", None), ((6, 2), 3, "rows", "right", None)]]


def _name(c):
    return "-".join(str(v) for v in c.values())


@pytest.mark.parametrize("dtype", ["float32", "bfloat16"])
@pytest.mark.parametrize("c", CASES, ids=map(_name, CASES))
def test_fused_attention_matches_float64_and_the_einsum_path(c, dtype):
    spec = AttentionSpec(scale=K**-0.5)
    ctx, (q, k, v), ref_inputs = case(**c, dtype=jnp.dtype(dtype))
    einsum, xla = jax.jit(lambda q, k, v: [attend(q, k, v, ctx._replace(implementation=i), spec)[0]
                                            for i in ("einsum", "xla")])(q, k, v)
    ref = reference(*ref_inputs, spec.scale)
    seen = ~np.isnan(ref).any(axis=(2, 3))  # rows with a key to read
    f = lambda x: np.asarray(x, np.float64)
    # float32: to rounding; bf16 (float32 softmax, bf16 output): within one bf16 step (2^-7 of
    # the value, and of 1 near 0) of float64 on the same bf16 inputs, as the einsum path is
    tolerance = 2e-6 if dtype == "float32" else 2**-7
    for ours in (xla, einsum):
        np.testing.assert_allclose(f(ours)[seen], ref[seen], rtol=tolerance, atol=tolerance)
    np.testing.assert_allclose(f(xla), f(einsum), rtol=2 * tolerance, atol=2 * tolerance)  # padding rows too


GEOMETRY = [CASES[i] for i in (1, 2, 5, 8)] + [dict(CASES[2], length=5)]  # odd queries after a cache


@pytest.mark.parametrize("c", GEOMETRY, ids=map(_name, GEOMETRY))
def test_the_cudnn_geometry_and_gradients_match_the_einsum_path(c):
    """The layout cuDNN gets (dummy queries ahead of the prefix, one masked key slot where the keys
    are odd in number), run by XLA's implementation; and gradients through it."""
    spec = AttentionSpec(scale=K**-0.5)
    ctx, (q, k, v), ref_inputs = case(**c, dtype=jnp.float32)
    ref = reference(*ref_inputs, spec.scale)
    seen = ~np.isnan(ref).any(axis=(2, 3))
    einsum = lambda q, k, v, pk, pv: attend(q, k, v, ctx._replace(prefix_k=pk, prefix_v=pv), spec)[0]

    def fused(q, k, v, pk, pv):
        keys, values = (k, v) if ctx.cache_k is None else attend(q, k, v, ctx, spec)[1]
        return fused_attention(q, keys, values, ctx.key_mask, pk, pv, ctx.prefix_mask, spec.scale,
                               causal=ctx.cache_k is None, implementation="xla", even=True)

    args = (q, k, v, ctx.prefix_k, ctx.prefix_v)
    weight = jnp.asarray(np.random.RandomState(1).randn(*q.shape) * seen[:, :, None, None], jnp.float32)
    grad = lambda fn: jax.grad(lambda *a: jnp.sum(fn(*a) * weight), argnums=(0, 1, 2, 3, 4))
    out, *grads = jax.jit(lambda *a: [fused(*a), grad(einsum)(*a), grad(fused)(*a)])(*args)
    np.testing.assert_allclose(np.asarray(out)[seen], ref[seen], atol=2e-6)
    for a, b in zip(*grads):
        np.testing.assert_allclose(np.asarray(b), np.asarray(a), atol=2e-6)


# attention is one function for every family (`attend`, whose features the tests above cover):
# these three bring it grouped heads and adaption prompts (llama), windows (mistral), a soft-cap
# that takes no kernel (gemma2)
FAMILIES = ["llama", "mistral", "gemma2"]


def _family(model_type):
    from conftest import TINY

    from jaxprompt.models.registry import config_from_hf

    return config_from_hf(TINY[model_type])


@pytest.mark.parametrize("model_type", FAMILIES)
def test_each_family_computes_the_same_with_the_fused_kernel(model_type):
    """A right-padded batch after a shared prefix (as a training step runs it) and a left-padded one
    with none (as `Model.logits` may be called), hidden states and their gradient w.r.t. the
    embeddings and the prefix; Llama-style families with adaption prompts too. Gemma 2's soft-cap
    takes no kernel: its fused model is its einsum model."""
    config = _family(model_type)
    params = Model(config).init(jax.random.key(0))
    rng = np.random.RandomState(0)
    E, L, G, Kh = config.d_embed, config.n_layers, config.n_kv_heads, config.head_dim
    embeds = jnp.asarray(rng.randn(2, 7, E) * 0.5, jnp.float32)
    right = np.ones((2, 7), bool)
    right[1, 5:] = False
    prefix = Prefix(*(jnp.asarray(rng.randn(L, 1, 3, G, Kh), jnp.float32) for _ in range(2)),
                    jnp.ones((L, 1, 3), bool))
    adapter = None
    if Model(config).arch.adaption_prompts:
        adapter = Adapter(jnp.asarray(rng.randn(L, 2, config.d_model) * 0.5, jnp.float32),
                          jnp.asarray(rng.randn(L) * 0.5, jnp.float32))
    left = np.ones((2, 7), bool)
    left[1, :3] = False

    def hidden(attention, mask, with_prefix, embeds, k, v):
        model = Model(config, attention=attention)

        def run(embeds, k, v):
            start = 3 if with_prefix else 0
            return model.transformer(params, embeds, positions_from_mask(jnp.asarray(mask), start), jnp.asarray(mask),
                                     prefix=prefix.replace(k=k, v=v) if with_prefix else None, adapter=adapter)[0]

        loss = lambda *a: jnp.sum(run(*a) ** 2 * jnp.asarray(mask)[..., None])
        return [run(embeds, k, v), *jax.grad(loss, argnums=(0, 1, 2))(embeds, k, v)]

    settings = [(i, mask, p) for i in ("xla", "einsum") for mask, p in ((right, True), (left, False))]
    results = jax.jit(lambda *a: [hidden(*s, *a) for s in settings])(embeds, prefix.k, prefix.v)
    for ours, theirs in zip(results[:2], results[2:]):
        for a, b in zip(ours, theirs):
            if model_type == "gemma2":
                np.testing.assert_array_equal(np.asarray(a), np.asarray(b))
            else:
                np.testing.assert_allclose(np.asarray(a), np.asarray(b), atol=2e-5, rtol=2e-5)


def test_calls_no_kernel_takes_fall_back_for_a_named_reason():
    assert fallback_reason("cudnn", jnp.bfloat16, 16, 64, 50.0, backend="gpu", capability=9.0) == "softcap"
    assert fallback_reason("cudnn", jnp.float32, 16, 64, None, backend="gpu", capability=9.0) == "float32"
    assert fallback_reason("cudnn", jnp.bfloat16, 1, 64, None, backend="gpu", capability=9.0) == "one query"
    assert fallback_reason("cudnn", jnp.bfloat16, 16, 160, None, backend="gpu", capability=8.0) == "head width"
    assert fallback_reason("cudnn", jnp.bfloat16, 16, 160, None, backend="gpu", capability=9.0) is None
    assert fallback_reason("cudnn", jnp.bfloat16, 16, 64, None, backend="cpu") == "not a gpu"
