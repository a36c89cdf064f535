"""Quantizing a frozen model (models/quantize.py): every weight takes the level nearest to it, a
checkpoint is quantized layer by layer as it is read (and by slices for sharded loads) into the
integers quantizing in memory gives, and every family's quantized logits are those of
`transformers` (float32 and bf16) running the dequantized weights, rebuilt in float64 numpy.

Why that reference: a quantized model must compute exactly the float model whose weights are the
dequantized ones, so its logits are compared with transformers on those weights at the float32
parity tolerance of tests/parity.py (1e-4). How far quantization moves the logits from the
unquantized model is a measurement, not a test: scripts/experiments/quantization_error.py.
"""

from __future__ import annotations

import copy

import jax
import jax.numpy as jnp
import ml_dtypes
import numpy as np
import parity
import pytest
from test_quantized import reference_weights

from jaxprompt.models import load_pretrained
from jaxprompt.models.convert import to_hf_state_dict
from jaxprompt.models.layers.quantized import NF4_LEVELS, is_quantized
from jaxprompt.models.quantize import (
    Scheme,
    _slice_of,
    check_quantizable,
    quantize_kernel,
    quantize_params,
    quantized_paths,
)
from jaxprompt.models.registry import architecture

# groups of 8 tile every kernel of conftest.TINY (widths 24 to 96); --quantize int4 takes 64
SMALL_GROUPS = [Scheme("int8"), Scheme("int4", 8), Scheme("nf4", 8)]


@pytest.mark.parametrize("scale_dtype", [np.float32, ml_dtypes.bfloat16])
@pytest.mark.parametrize("scheme", SMALL_GROUPS, ids=str)
def test_each_weight_takes_the_level_nearest_to_it(scheme, scale_dtype):
    """Per group, the scale is absmax / largest level (rounded to the stored dtype), and every
    weight's stored level is, of all the format's levels times that stored scale, the nearest to
    it (found here by brute force in float64)."""
    rng = np.random.default_rng(0)
    w = (rng.standard_normal((3, 32, 12)) * rng.uniform(0.01, 3.0, 12)).astype(np.float32)  # as read from a file
    w[0, :, 0] = 0.0  # an all-zero channel: scale 0, weights 0
    values, scales = quantize_kernel(w, scheme, scale_dtype)
    top = {"int8": 127, "int4": 7, "nf4": 1}[scheme.format]
    G = scheme.group or 32
    absmax = np.abs(w.astype(np.float64).reshape(3, 32 // G, G, 12)).max(axis=2)
    np.testing.assert_array_equal(scales, (absmax / top).astype(scale_dtype))
    levels = {"int8": np.arange(-127, 128.0), "int4": np.arange(-7, 8.0), "nf4": NF4_LEVELS.astype(np.float64)}
    candidates = levels[scheme.format][:, None, None, None] * np.repeat(scales.astype(np.float64), G, axis=-2)
    best = np.abs(candidates - w).min(axis=0)
    np.testing.assert_allclose(np.abs(reference_weights(values, scales, scheme.format) - w), best, rtol=1e-12,
                               atol=1e-12)
    assert np.all(reference_weights(values, scales, scheme.format)[0, :, 0] == 0)


def test_a_model_the_groups_do_not_tile_is_refused_in_one_line():
    from conftest import tiny_config

    from jaxprompt.models import ConfigError

    config = tiny_config("llama")  # d_model 32
    check_quantizable(config, "int8")
    with pytest.raises(ConfigError, match="--quantize int4 holds weights in groups of 64 inputs; this llama model's "
                                          "mlp/gate_proj has 32 inputs: use --quantize int8"):
        check_quantizable(config, "int4")


# ---- loading ---------------------------------------------------------------------------------------

@pytest.mark.parametrize("scheme", [Scheme("int8"), Scheme("nf4", 8)], ids=str)
def test_loading_quantizes_one_layer_at_a_time_what_quantizing_in_memory_gives(tiny_hf, monkeypatch, scheme):
    """`load_pretrained(quantize=...)` reads each kernel one layer at a time (the host holds the
    quantized stack and one float32 layer) and holds the integers and scales that quantizing the
    float32 model in memory gives, bit for bit; every other leaf is the float one."""
    from jaxprompt.models.loading import CheckpointReader

    _, directory = tiny_hf("llama")
    config, floats = load_pretrained(directory)
    reads = []
    original = CheckpointReader.leaf

    def leaf(self, path, index=None, dtype=jnp.float32):
        out = original(self, path, index, dtype)
        reads.append((path, out.shape))
        return out

    monkeypatch.setattr(CheckpointReader, "leaf", leaf)
    _, params = load_pretrained(directory, quantize=scheme)
    kernels = set(quantized_paths(config))
    assert {path for path, _ in reads} >= kernels
    assert all(shape[0] == 1 for path, shape in reads if path in kernels)
    assert sum(path in kernels for path, _ in reads) == len(kernels) * config.n_layers
    want = quantize_params(config, floats, scheme)
    assert jax.tree.structure(params) == jax.tree.structure(want)
    jax.tree.map(np.testing.assert_array_equal, params, want)


@pytest.mark.parametrize("scheme", [Scheme("int8"), Scheme("nf4", 8)], ids=str)
def test_a_slice_of_a_quantized_kernel_is_read_as_the_same_slice_of_the_whole(tiny_hf, scheme):
    """A sharded load reads each device's slice of the values and of the scales on its own (rows
    widened to whole groups): any slice, aligned with the groups or not, equals that slice of the
    kernel quantized whole."""
    from jaxprompt.models.loading import CheckpointReader, TensorSource
    from jaxprompt.models.quantize import quantized_shape
    from jaxprompt.models.registry import config_from_hf

    _, directory = tiny_hf("llama")
    config = config_from_hf(directory)
    reader = CheckpointReader(config, TensorSource(directory))
    path = ("layers", "mlp", "down_proj", "kernel")  # [L, 64, 48]
    whole = reader.leaf(path, dtype=np.float32)
    spec = quantized_shape(jax.ShapeDtypeStruct(whole.shape, jnp.float32), scheme)
    values, scales = quantize_kernel(whole, scheme)
    for part, full in (("values", values), ("scales", scales)):
        rows = full.shape[1]
        for lo, hi in {(0, rows), (1, rows - 1), (rows // 2, rows), (rows - 1, rows)} - {(1, 0)}:
            index = (slice(1, 2), slice(lo, hi), slice(5, 30))
            np.testing.assert_array_equal(_slice_of(reader, path, spec, scheme, part, index), full[index],
                                          err_msg=f"{part} rows {lo}:{hi}")


# ---- every family against transformers on the dequantized weights ------------------------------------

FAMILIES = ["gpt2", "opt", "llama", "mistral", "qwen2", "qwen3", "gemma", "gemma2", "gpt_neox"]


def _on_dequantized_weights(pt_model, config, params, dtype):
    """A copy of the transformers model holding the float64-dequantized weights of `params`, in `dtype`."""
    import torch

    weights = jax.tree.map(lambda x: reference_weights(x.values, x.scales, x.format) if is_quantized(x)
                           else np.asarray(x, np.float64), params, is_leaf=is_quantized)
    spelled = {published: own for own, published in architecture(config.model_type).key_aliases.items()}
    state = {spelled.get(k, k): torch.tensor(v).to(dtype) for k, v in to_hf_state_dict(config, weights).items()}
    model = copy.deepcopy(pt_model).to(dtype)
    missing, unexpected = model.load_state_dict(state, strict=False)
    assert not unexpected and all(k in (parity.tied_head_key(config),) or "rotary" in k or "masked_bias" in k
                                  or k.endswith("attn.bias") for k in missing), missing
    return model


def _logits(config, params, tokens, mask):
    from jaxprompt.models import Model

    return np.asarray(Model(config).logits(params, jnp.asarray(tokens), jnp.asarray(mask)), np.float64)


@pytest.mark.parametrize("family", FAMILIES)
def test_quantized_logits_are_transformers_on_the_dequantized_weights(tiny_hf, family):
    """float32 NF4: within tests/parity.py's 1e-4 of transformers (fp32, eager) holding the
    dequantized weights, on a right-padded batch; and away from the unquantized model's logits, so
    the comparison sees the quantization. (Every format reaches a family's blocks through the one
    `quantized_matmul`, checked per format in tests/test_quantized.py; int8 runs through whole
    models below.)"""
    import torch

    pt_model, directory = tiny_hf(family)
    tokens, mask = parity.padded_batch("right", pt_model.config.vocab_size)
    real = mask.astype(bool)
    config, params = load_pretrained(directory, quantize=Scheme("nf4", 8))
    ref = parity.torch_logits(_on_dequantized_weights(pt_model, config, params, torch.float32), tokens, mask)
    ours = _logits(config, params, tokens, mask)
    np.testing.assert_allclose(ours[real], ref[real], atol=1e-4, rtol=0)
    assert np.abs(ours[real] - parity.torch_logits(pt_model, tokens, mask)[real]).max() > 1e-2


@pytest.mark.parametrize("family", ["llama", "gpt2"])
def test_quantized_bf16_logits_are_as_close_to_float32_as_transformers_bf16(tiny_hf, family):
    """int8 in bf16 (scales and compute): the quantized model's logits lie within twice the distance
    of transformers' own bf16 logits from its float32 ones, on the same dequantized weights: two
    bf16 computations of one function each round away from the exact result, by at most that much.
    The same integers and scales computed in float32 are within 1e-4 of it."""
    import torch

    pt_model, directory = tiny_hf(family)
    tokens, mask = parity.padded_batch("right", pt_model.config.vocab_size)
    real = mask.astype(bool)
    config, params = load_pretrained(directory, dtype=jnp.bfloat16, quantize="int8")
    exact = parity.torch_logits(_on_dequantized_weights(pt_model, config, params, torch.float32), tokens, mask)[real]
    torch_bf16 = parity.torch_logits(_on_dequantized_weights(pt_model, config, params, torch.bfloat16), tokens,
                                     mask)[real]
    ours = _logits(config, params, tokens, mask)[real]
    allowed = 2 * np.abs(torch_bf16 - exact).max()
    print(f"bf16: ours {np.abs(ours - exact).max():.4f}, transformers {allowed / 2:.4f} from float32")
    assert 0 < np.abs(ours - exact).max() <= allowed
    as_float32 = jax.tree.map(lambda x: x.astype(jnp.float32) if jnp.issubdtype(x.dtype, jnp.floating) else x, params)
    np.testing.assert_allclose(_logits(config, as_float32, tokens, mask)[real], exact, atol=1e-4, rtol=0)


# ---- every prompt method, and a population, on quantized weights ------------------------------------

# the three ways a prompt meets the frozen layers: embeddings (soft; p-tuning, relaxed and PEZ prompts
# are embeddings too, made from an encoder or from the vocabulary table, which is not quantized),
# keys/values in every layer (prefix), gated prompts through each layer's k/v projections (adaption)
METHODS = [("soft", {}), ("prefix", {}), ("adaption", {"top_layers": 1})]


@pytest.mark.parametrize("name,options", METHODS, ids=[n for n, _ in METHODS])
def test_every_method_sees_the_float_model_holding_the_dequantized_weights(tiny_lms, gpt2_tokenizer, name, options):
    """On a quantized Llama (NF4), each method's loss and prompt gradient equal those on the same
    model holding the dequantized weights as float32 (the soft prompt sits inside the template: an
    infix; adaption prompts go through the quantized k/v projections); and a population of two soft
    prompts (`vmap`, the weights shared) gives each member's own gradient."""
    from conftest import ANTONYM_PAIRS

    from jaxprompt.data.batches import collate
    from jaxprompt.data.templates import Template, encode
    from jaxprompt.prompts import METHODS
    from jaxprompt.prompts.loss import prompt_loss

    model, frozen = tiny_lms("llama")
    quantized = quantize_params(model.config, frozen, Scheme("nf4", 8))
    dense = jax.tree.map(lambda x: jnp.asarray(reference_weights(x.values, x.scales, x.format), jnp.float32)
                         if is_quantized(x) else x, quantized, is_leaf=is_quantized)
    method = METHODS[name](length=3, **options)
    template = Template("Here are two {prompt} {word1} and", " {word2}")
    batch = collate([encode(template, {"word1": a, "word2": b}, gpt2_tokenizer, method)
                     for a, b in ANTONYM_PAIRS[:4]], 50256)
    prompt = method.init(jax.random.key(1), model, frozen, template.n_virtual(3))
    loss = prompt_loss(model, method)
    value_and_grad = jax.jit(jax.value_and_grad(lambda p, f: loss(p, f, batch, jax.random.key(0), 1)[0]))
    (got, got_grad), (want, want_grad) = value_and_grad(prompt, quantized), value_and_grad(prompt, dense)
    np.testing.assert_allclose(got, want, rtol=1e-5)
    jax.tree.map(lambda a, b: np.testing.assert_allclose(a, b, rtol=1e-4, atol=1e-6 * np.abs(b).max()),
                 got_grad, want_grad)
    if name == "soft":
        members = jax.tree.map(lambda x: jnp.stack([x, 2 * x]), prompt)
        grads = jax.jit(jax.vmap(jax.grad(lambda p, f: loss(p, f, batch, jax.random.key(0), 1)[0]),
                                 in_axes=(0, None)))(members, quantized)
        second = value_and_grad(jax.tree.map(lambda x: 2 * x, prompt), dense)[1]
        jax.tree.map(lambda g, a, b: (np.testing.assert_allclose(g[0], a, rtol=1e-4, atol=1e-6 * np.abs(a).max()),
                                      np.testing.assert_allclose(g[1], b, rtol=1e-4, atol=1e-6 * np.abs(b).max())),
                     grads, want_grad, second)
