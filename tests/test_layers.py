"""Shared layers against independent references: rotary frequencies and rotation (transformers'
functions), RMSNorm in both roundings (transformers' modules, bf16), and grouped-query attention
with a sliding window and soft-capping (a direct numpy loop over heads)."""

from __future__ import annotations

import jax.numpy as jnp
import numpy as np
import pytest

from jaxprompt.models.layers.attention import AttentionSpec, LayerInputs, attend, key_masks
from jaxprompt.models.layers.basic import rms_norm
from jaxprompt.models.layers.rotary import apply_rotary, rotary_angles, rotary_inv_freq

torch = pytest.importorskip("torch")

SCALINGS = [None, {"rope_type": "linear", "factor": 4.0},
            {"rope_type": "llama3", "factor": 8.0, "low_freq_factor": 1.0, "high_freq_factor": 4.0,
             "original_max_position_embeddings": 64}]


@pytest.mark.parametrize("scaling", SCALINGS, ids=["default", "linear", "llama3"])
def test_rotary_frequencies_match_transformers(scaling):
    from transformers import LlamaConfig
    from transformers.models.llama.modeling_llama import LlamaRotaryEmbedding

    config = LlamaConfig(hidden_size=256, num_attention_heads=4, rope_theta=5000.0, rope_scaling=scaling)
    ref = LlamaRotaryEmbedding(config).inv_freq.numpy()
    np.testing.assert_allclose(rotary_inv_freq(64, 5000.0, scaling), ref, rtol=1e-6)


def test_partial_rotation_matches_gpt_neox():
    from transformers.models.gpt_neox.modeling_gpt_neox import apply_rotary_pos_emb

    rng = np.random.RandomState(0)
    q = rng.randn(2, 5, 3, 16).astype(np.float32)  # [B, T, heads, K]; a quarter of each head rotates
    positions = np.array([[0, 1, 2, 3, 4], [7, 8, 9, 10, 11]])
    cos, sin = rotary_angles(jnp.asarray(positions), rotary_inv_freq(4, 10000.0), jnp.float32)
    ours = apply_rotary(jnp.asarray(q), cos, sin)
    qt = torch.tensor(q).transpose(1, 2)  # transformers: [B, heads, T, K]
    ref, _ = apply_rotary_pos_emb(qt, qt, torch.tensor(np.asarray(cos)), torch.tensor(np.asarray(sin)))
    np.testing.assert_allclose(np.asarray(ours), ref.transpose(1, 2).numpy(), atol=1e-6)
    np.testing.assert_array_equal(np.asarray(ours)[..., 4:], q[..., 4:])  # the rest passes through


@pytest.mark.parametrize("gemma", [False, True])
def test_rms_norm_rounds_like_transformers_in_bf16(gemma):
    from transformers.models.gemma.modeling_gemma import GemmaRMSNorm
    from transformers.models.llama.modeling_llama import LlamaRMSNorm

    norm = (GemmaRMSNorm if gemma else LlamaRMSNorm)(64, eps=1e-6)
    with torch.no_grad():
        norm.weight.copy_(torch.randn(64) * 0.5)
    norm = norm.to(torch.bfloat16)
    x = torch.randn(4, 64).to(torch.bfloat16) * 3
    with torch.no_grad():
        ref = norm(x).float().numpy()
    to_jax = lambda t: jnp.asarray(t.detach().float().numpy()).astype(jnp.bfloat16)
    ours = rms_norm(to_jax(x), to_jax(norm.weight), 1e-6, unit_offset=gemma)
    assert ours.dtype == jnp.bfloat16
    np.testing.assert_array_equal(np.asarray(ours.astype(jnp.float32)), ref)


def _reference_attention(q, k, v, valid, scale, softcap):
    """Per query head h: softmax over the keys of key/value head h // R, with a validity matrix."""
    B, T, H, K = q.shape
    G = k.shape[2]
    out = np.zeros_like(q)
    for b in range(B):
        for h in range(H):
            s = scale * q[b, :, h] @ k[b, :, h // (H // G)].T
            if softcap:
                s = softcap * np.tanh(s / softcap)
            s = np.where(valid[b], s, -np.inf)
            w = np.exp(s - s.max(-1, keepdims=True))
            out[b, :, h] = (w / w.sum(-1, keepdims=True)) @ v[b, :, h // (H // G)]
    return out


@pytest.mark.parametrize("window,softcap", [(None, None), (3, None), (3, 2.0)])
def test_grouped_query_attention_with_window_and_cap(window, softcap):
    rng = np.random.RandomState(1)
    B, T, H, G, K = 2, 7, 6, 2, 4
    q, k, v = (rng.randn(B, T, n, K).astype(np.float32) for n in (H, G, G))
    mask = np.ones((B, T), bool)
    mask[1, :2] = False  # left padding in row 1
    positions = np.maximum(np.cumsum(mask, 1) - 1, 0)
    masks = key_masks(jnp.asarray(mask), jnp.asarray(positions), None, 0, window)
    ctx = LayerInputs(masks.full if window is None else masks.windowed, None, None, None, None, None, None, None)
    ours, _ = attend(jnp.asarray(q), jnp.asarray(k), jnp.asarray(v), ctx, AttentionSpec(0.5, softcap))
    valid = np.tril(np.ones((T, T), bool))[None] & mask[:, None, :]
    if window is not None:
        valid &= positions[:, :, None] - positions[:, None, :] < window
    ref = _reference_attention(q, k, v, valid, 0.5, softcap)
    np.testing.assert_allclose(np.asarray(ours)[mask], ref[mask], atol=1e-5)


def test_a_rematerialised_bf16_stack_converts_one_layer_at_a_time():
    """XLA's CPU backend computes bf16 matmuls in float32 and, left alone, converts the whole
    stacked weights before the scan: a float32 copy of every layer. With remat the layers cross the
    scan as raw bits (`as_bits`): the input gradient of a bf16 Llama-shaped stack then compiles
    with temporaries smaller than that copy (measured: 21.5 MB, against 38.3 MB without `as_bits`
    and a 33.6 MB copy), and equals the gradient without remat."""
    import jax
    from conftest import tiny_config

    from jaxprompt.models import Model, positions_from_mask

    config = tiny_config("llama", vocab_size=64, d_model=256, n_heads=4, n_kv_heads=4, d_ff=1024, n_layers=8)
    params = jax.tree.map(lambda x: x.astype(jnp.bfloat16), Model(config).init(jax.random.key(0)))
    layer_bytes = sum(x.nbytes for x in jax.tree.leaves(params[Model(config).arch.stack_key]))
    embeds = jnp.ones((2, 16, 256), jnp.bfloat16) * 0.1
    mask = jnp.ones((2, 16), bool)

    def gradient(remat):
        model = Model(config, remat=remat)

        def loss(e, p):
            hidden, _ = model.transformer(p, e, positions_from_mask(mask), mask)
            return jnp.sum(hidden.astype(jnp.float32) ** 2)

        return jax.jit(jax.grad(loss))

    compiled = gradient(True).lower(embeds, params).compile()
    assert compiled.memory_analysis().temp_size_in_bytes < 2 * layer_bytes, (
        compiled.memory_analysis().temp_size_in_bytes, layer_bytes)
    np.testing.assert_array_equal(np.asarray(gradient(True)(embeds, params), np.float32),
                                  np.asarray(gradient(False)(embeds, params), np.float32))


def test_bf16_layers_held_as_bits_share_memory_and_copy_nothing_in_a_forward_pass():
    """`bits_in_place` views bf16 layers as raw bits in the same buffers (no copy). A forward pass
    over them then holds less than one layer's float32 weights of temporaries: `as_bits` inside the
    program copies every layer first (about the stack's bf16 bytes), and without bits XLA's CPU
    backend converts every layer to float32 ahead of the scan (twice them). Its output equals the
    forward pass over the bf16 weights, bit for bit."""
    import jax
    from conftest import tiny_config

    from jaxprompt.models import Model, positions_from_mask
    from jaxprompt.models.layers.bits import bits_in_place

    config = tiny_config("llama", vocab_size=64, d_model=256, n_heads=4, n_kv_heads=4, d_ff=1024, n_layers=8)
    model = Model(config, remat=True)
    params = jax.tree.map(lambda x: x.astype(jnp.bfloat16), model.init(jax.random.key(0)))
    key = model.arch.stack_key
    bits = {**params, key: bits_in_place(params[key])}
    for a, b in zip(jax.tree.leaves(params[key]), jax.tree.leaves(bits[key])):
        assert b.dtype == jnp.uint16 and b.unsafe_buffer_pointer() == a.unsafe_buffer_pointer()
    layer_f32 = 2 * sum(x.nbytes for x in jax.tree.leaves(params[key])) // config.n_layers
    embeds, mask = jnp.ones((2, 16, 256), jnp.bfloat16) * 0.1, jnp.ones((2, 16), bool)
    forward = jax.jit(lambda p: model.transformer(p, embeds, positions_from_mask(mask), mask)[0])
    temp = lambda p: forward.lower(p).compile().memory_analysis().temp_size_in_bytes
    assert temp(bits) < 2 * layer_f32 < temp(params), (temp(bits), layer_f32, temp(params))
    np.testing.assert_array_equal(np.asarray(forward(bits), np.float32), np.asarray(forward(params), np.float32))


def test_remat_policies_trade_memory_for_recomputation_and_keep_the_gradient():
    """What the backward pass keeps of each layer, measured by XLA's buffer assignment of the input
    gradient: "full" (each layer's input) < "dots" (the weight matmuls' outputs) < "none"; every
    policy gives the gradient of the step without one."""
    import jax
    from conftest import tiny_config

    from jaxprompt.models import Model, positions_from_mask

    config = tiny_config("llama", vocab_size=64, d_model=64, n_heads=4, n_kv_heads=2, d_ff=512, n_layers=4)
    params = Model(config).init(jax.random.key(0))
    embeds, mask = jnp.ones((2, 32, 64)) * 0.1, jnp.ones((2, 32), bool)

    def gradient(remat):
        model = Model(config, remat=remat)
        loss = lambda e: jnp.sum(model.transformer(params, e, positions_from_mask(mask), mask)[0] ** 2)
        compiled = jax.jit(jax.grad(loss)).lower(embeds).compile()
        return compiled.memory_analysis().temp_size_in_bytes, compiled(embeds)

    (full, g_full), (dots, g_dots), (none, g_none) = (gradient(r) for r in ("full", "dots", "none"))
    assert full < dots < none, (full, dots, none)
    for g in (g_full, g_dots):
        np.testing.assert_allclose(np.asarray(g), np.asarray(g_none), rtol=1e-5, atol=1e-6)
