"""Kernels held in 8 and 4 bits (models/layers/quantized.py): the matmul against a float64
dequantize-then-multiply reference written here in numpy, its input gradient, the NF4 levels
against QLoRA's construction, and the compiled programs: neither a training step nor a decode loop
holds a float copy of the quantized stack."""

from __future__ import annotations

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from conftest import tiny_config

from jaxprompt.models.layers.quantized import NF4_LEVELS, Quantized, dequantize, quantized_matmul
from jaxprompt.models.quantize import Scheme, quantize_kernel, quantize_params


def reference_weights(values: np.ndarray, scales: np.ndarray, format: str) -> np.ndarray:
    """float64 weights [..., I, O] from the stored integers and scales, by the layout's definition:
    byte k of a column holds input rows 2k (low nibble) and 2k + 1 (high); every weight is its
    level times the scale of its group of consecutive rows."""
    values, scales = np.asarray(values), np.asarray(scales, np.float64)
    if format == "int8":
        level = values.astype(np.float64)
    else:
        codes = np.empty((*values.shape[:-2], 2 * values.shape[-2], values.shape[-1]), np.int64)
        codes[..., 0::2, :] = values % 16
        codes[..., 1::2, :] = values // 16
        level = NF4_LEVELS.astype(np.float64)[codes] if format == "nf4" else codes - 8.0
    return level * np.repeat(scales, level.shape[-2] // scales.shape[-2], axis=-2)


SCHEMES = [Scheme("int8"), Scheme("int4", 16), Scheme("nf4", 16)]


@pytest.mark.parametrize("dtype", [jnp.float32, jnp.bfloat16])
@pytest.mark.parametrize("scheme", SCHEMES, ids=str)
def test_quantized_matmul_is_the_float64_dequantize_then_multiply(scheme, dtype):
    """`quantized_matmul(x, w)` equals float64 `x @ W` with W rebuilt from the integers and scales,
    within the rounding the compute dtype allows (derived, not tuned): in float32, the accumulation
    bound (I + 1) u sum_i |x_i W_io| with u = 2^-24; in bf16, each weight rounded to bf16 once (u =
    2^-9, relative) and the output rounded once more: 2^-8 sum_i |x_i W_io|."""
    rng = np.random.default_rng(0)
    I, O = 64, 40
    w = rng.standard_normal((I, O)) * rng.uniform(0.01, 2.0, O)  # columns of different magnitudes
    values, scales = quantize_kernel(w, scheme, dtype)
    x = jnp.asarray(rng.standard_normal((3, 5, I)), dtype)
    got = np.asarray(quantized_matmul(x, Quantized(jnp.asarray(values), jnp.asarray(scales), scheme.format)),
                     np.float64)
    x64 = np.asarray(x, np.float64)
    W = reference_weights(values, scales, scheme.format)
    want, magnitude = x64 @ W, np.abs(x64) @ np.abs(W)
    bound = (I + 1) * 2.0**-24 * magnitude if dtype == jnp.float32 else 2.0**-8 * magnitude
    assert np.all(np.abs(got - want) <= bound), np.max(np.abs(got - want) / magnitude)
    assert np.abs(want).max() > 1.0


@pytest.mark.parametrize("scheme", SCHEMES, ids=str)
def test_the_input_gradient_is_the_float64_transposed_kernel(scheme):
    """d(sum c * (x @ W))/dx = c @ W^T, W the float64 reference; the gradient's backward pass
    dequantizes the layer again (no float weights are kept between the passes)."""
    rng = np.random.default_rng(1)
    values, scales = quantize_kernel(rng.standard_normal((2, 32, 24)), scheme)
    layer = Quantized(jnp.asarray(values[1]), jnp.asarray(scales[1]), scheme.format)
    c = rng.standard_normal((4, 24))
    grad = jax.grad(lambda x: jnp.sum(jnp.asarray(c, jnp.float32) * quantized_matmul(x, layer)))(
        jnp.asarray(rng.standard_normal((4, 32)), jnp.float32))
    want = c @ reference_weights(values[1], scales[1], scheme.format).T
    np.testing.assert_allclose(np.asarray(grad, np.float64), want, rtol=0, atol=(24 + 1) * 2.0**-24 *
                               np.abs(c).sum(-1, keepdims=True).max() * np.abs(want).max() + 1e-6)
    np.testing.assert_allclose(np.asarray(dequantize(layer), np.float64),
                               reference_weights(values[1], scales[1], scheme.format), rtol=2.0**-23, atol=0)


def test_nf4_levels_are_the_normal_quantiles_of_qlora():
    """The 16 NF4 levels, rebuilt as Dettmers et al. (2023, "QLoRA", appendix E) build them: 8
    positive and 7 negative quantiles of N(0, 1) between the offset 0.9677 and 0.5, zero, all
    divided by the largest (bitsandbytes' `create_normal_map`)."""
    from scipy.stats import norm

    offset = 0.9677083
    levels = np.concatenate([norm.ppf(np.linspace(offset, 0.5, 9)[:-1]), [0.0],
                             -norm.ppf(np.linspace(offset, 0.5, 8)[:-1])])
    levels = np.sort(levels) / levels.max()
    np.testing.assert_allclose(NF4_LEVELS, levels, rtol=0, atol=2e-7)


# ---- the compiled programs: no float copy of the stack ------------------------------------------

def _stack(scheme, small: bool = False):
    from jaxprompt.models import Model

    config = tiny_config("llama", vocab_size=64, **({} if small else dict(d_model=256, n_heads=4, n_kv_heads=4,
                                                                           d_ff=1024, n_layers=8)))
    model = Model(config)
    return model, quantize_params(config, model.init(jax.random.key(0)), scheme)


def _float_stack_shapes(model) -> set[str]:
    """The HLO spellings of a float copy of any stacked kernel: f32[8,256,1024] and the like."""
    from jaxprompt.models.architecture import leaf_at
    from jaxprompt.models.quantize import quantized_paths

    shapes = {leaf_at(model.param_shapes(), p).shape for p in quantized_paths(model.config)}
    return {f"{t}[{','.join(map(str, s))}]" for s in shapes for t in ("f32", "bf16")}


def test_a_training_step_holds_no_float_copy_of_the_quantized_stack():
    """The input gradient through a quantized Llama-shaped stack (8 layers, 8.4 M kernel weights in
    NF4): its compiled HLO has no float array of a stacked kernel's shape, and its temporaries are
    less than half a float32 copy of the stack's kernels (measured: 0.37 of it). Each layer is
    dequantized where it runs, and again in the backward pass: differentiating `x @ dequantize(w)`
    as it stands keeps every layer's float weights for the backward pass (measured: 1.37 float32
    copies, with f32[8,256,1024] and its kind in the HLO)."""
    from jaxprompt.models import positions_from_mask

    model, params = _stack(Scheme("nf4", 64))
    kernels_f32 = 4 * sum(int(np.prod(s)) for s in (q.shape for q in jax.tree.leaves(
        params["layers"], is_leaf=lambda x: isinstance(x, Quantized)) if isinstance(q, Quantized)))
    embeds, mask = jnp.ones((2, 16, 256)) * 0.1, jnp.ones((2, 16), bool)

    def loss(e, p):
        hidden, _ = model.transformer(p, e, positions_from_mask(mask), mask)
        return jnp.sum(hidden ** 2)

    compiled = jax.jit(jax.grad(loss)).lower(embeds, params).compile()
    text = compiled.as_text()
    assert not [s for s in _float_stack_shapes(model) if s in text]
    assert compiled.memory_analysis().temp_size_in_bytes < kernels_f32 / 2, (
        compiled.memory_analysis().temp_size_in_bytes, kernels_f32)


def test_decoding_a_quantized_model_keeps_one_copy_of_its_layers():
    """`generate` and the server's scheduler run quantized layers through the stack's scan
    (`decode.decoding_form`), the session's own arrays: one buffer per layer (`decoding_params`)
    would be a second copy of the quantized weights, made outside any program. Its greedy tokens
    are those of the float model with the dequantized weights."""
    from jaxprompt.inference.decode import decoding_form, generate
    from jaxprompt.models.layers.quantized import is_quantized

    model, params = _stack(Scheme("int8"), small=True)
    _, decoding, per_layer = decoding_form(model, params)
    assert decoding is params and not per_layer
    dense = jax.tree.map(lambda x: dequantize(x, jnp.float32) if is_quantized(x) else x, params,
                         is_leaf=is_quantized)
    ids, mask = jnp.ones((2, 6), jnp.int32), jnp.ones((2, 6), bool)
    run = lambda p: generate(model, p, model.embed(p, ids), mask, max_new_tokens=4)[0]
    np.testing.assert_array_equal(np.asarray(run(params)), np.asarray(run(dense)))
