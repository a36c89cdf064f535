"""The model's own checks: real tokens past the position table are refused by the forward pass
itself (eagerly, under `jit`, with a prefix), while a batch padded past the table whose real tokens
fit computes what the unpadded batch computes."""

from __future__ import annotations

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from conftest import TINY

from jaxprompt.models import Model, PositionError, Prefix, positions_from_mask
from jaxprompt.models.registry import config_from_hf


@pytest.fixture(scope="module")
def gpt2_40():
    model = Model(config_from_hf({**TINY["gpt2"], "n_positions": 40}))
    return model, model.init(jax.random.key(0), std=0.2)


def test_tokens_past_the_position_table_are_refused(gpt2_40):
    model, params = gpt2_40
    tokens = jnp.ones((1, 45), jnp.int32)
    with pytest.raises(PositionError, match="the input needs 45 positions .prefix 0 included.; the model has 40"):
        model.logits(params, tokens)
    with pytest.raises(Exception, match="the input needs 45 positions"):  # under jit: from inside the program
        jax.block_until_ready(jax.jit(model.logits)(params, tokens))
    prefix = Prefix(k=jnp.zeros((2, 1, 5, 4, 8)), v=jnp.zeros((2, 1, 5, 4, 8)), mask=jnp.ones((2, 1, 5), bool))
    mask = jnp.ones((1, 36), bool)
    with pytest.raises(PositionError, match="needs 41 positions .prefix 5 included"):
        model.forward(params, model.embed(params, tokens[:, :36]), positions_from_mask(mask, 5), mask, prefix=prefix)
    assert model.logits(params, tokens[:, :40]).shape == (1, 40, 128)  # the whole table is usable


def test_padding_past_the_table_is_not_refused(gpt2_40):
    """Length buckets may pad past the table: the real tokens' positions decide."""
    model, params = gpt2_40
    tokens = jnp.asarray(np.random.RandomState(0).randint(3, 128, (1, 38)))
    padded = jnp.concatenate([tokens, jnp.zeros((1, 10), jnp.int32)], axis=1)
    mask = jnp.arange(48)[None] < 38
    want = model.logits(params, tokens)
    np.testing.assert_allclose(np.asarray(model.logits(params, padded, mask)[:, :38]), np.asarray(want), atol=1e-5)
    got = jax.jit(model.logits)(params, padded, mask)
    np.testing.assert_allclose(np.asarray(got[:, :38]), np.asarray(want), atol=1e-5)


@pytest.mark.parametrize("family", ["llama", "gpt2"])  # an untied head stored [E, V], a tied table
def test_bf16_vocabulary_tables_held_as_bits_are_converted_in_blocks(family):
    """On a CPU, bf16 tables are held as raw bits in their own buffers (`hold_as_bits`), and
    `over_vocabulary` converts them a block of rows at a time: a training step's gradient through
    the logits then holds less than half a float32 copy of the table, where the bf16 table's step
    holds more than one (XLA's CPU backend multiplies bf16 in float32). Logits and their gradient
    equal those of the bf16 table to float32 rounding, as do relaxed prompts' mixtures of its rows
    and their gradient; the embedding lookup and PEZ's nearest tokens exactly."""
    from conftest import tiny_config

    from jaxprompt.models.layers.bits import from_bits
    from jaxprompt.prompts import METHODS

    config = tiny_config(family, vocab_size=4099, d_model=256, d_embed=256, n_heads=4, n_kv_heads=4, d_ff=256,
                         n_layers=1)
    model = Model(config)
    params = jax.tree.map(lambda x: x.astype(jnp.bfloat16), model.init(jax.random.key(0)))
    held = model.hold_as_bits(params)
    for path, _ in model.arch.vocabulary_leaves(config).values():
        stored, bits = params, held
        for name in path:
            stored, bits = stored[name], bits[name]
        assert bits.dtype == jnp.uint16 and bits.unsafe_buffer_pointer() == stored.unsafe_buffer_pointer()
        read = from_bits(bits)  # outside a program, read back as bf16 in the same memory too
        assert read.dtype == jnp.bfloat16 and read.unsafe_buffer_pointer() == stored.unsafe_buffer_pointer()
    table_f32 = config.vocab_size * config.d_embed * 4

    hidden = jax.random.normal(jax.random.key(1), (2, 3, config.d_model)).astype(jnp.bfloat16)
    targets = jnp.array([[5, 4098, 77], [4000, 1, 2048]])

    def nll(h, p):
        logits = model.unembed(p, h)
        return (jax.nn.logsumexp(logits, -1) - jnp.take_along_axis(logits, targets[..., None], -1)[..., 0]).sum()

    step = jax.jit(jax.value_and_grad(nll))
    temp = lambda p: step.lower(hidden, p).compile().memory_analysis().temp_size_in_bytes
    assert temp(held) < table_f32 / 2 < table_f32 < temp(params), (temp(held), table_f32, temp(params))
    (loss, grad), (loss_ref, grad_ref) = step(hidden, held), step(hidden, params)
    np.testing.assert_allclose(loss, loss_ref, rtol=1e-6)
    # the gradient is bf16, like the hidden states: equal to within one rounding of a float32 sum
    np.testing.assert_allclose(np.asarray(grad, np.float32), np.asarray(grad_ref, np.float32), rtol=1e-2, atol=1e-6)
    np.testing.assert_allclose(jax.jit(model.unembed)(held, hidden), jax.jit(model.unembed)(params, hidden),
                               rtol=1e-5, atol=1e-6)

    tokens = jnp.array([[0, 4098, 17]])
    np.testing.assert_array_equal(np.asarray(model.embed(held, tokens), np.float32),
                                  np.asarray(model.embed(params, tokens), np.float32))
    # in a loop, as in decoding, the lookup reads only the rows it gathered (a read of the whole
    # loop-invariant table would be converted once, ahead of the loop: 1.05 GB at Llama-3.2-1B)
    looped = jax.jit(lambda p: jax.lax.fori_loop(
        0, 3, lambda i, total: total + model.embed(p, tokens + i).astype(jnp.float32).sum(), 0.0))
    assert looped.lower(held).compile().memory_analysis().temp_size_in_bytes < table_f32 / 8
    pez = METHODS["pez"](length=4)
    prompt = {"embeddings": jax.random.normal(jax.random.key(2), (4, config.d_embed)) * 0.05}
    np.testing.assert_array_equal(jax.jit(pez.tokens, static_argnums=1)(prompt, model, held),
                                  jax.jit(pez.tokens, static_argnums=1)(prompt, model, params))
    # relaxed prompts mix the table's rows (a sum over its blocks, in float32 as a CPU computes
    # it): the mixture and its gradient, against the same rows in float32 taken whole
    relaxed = METHODS["relaxed"](length=4)
    logits = relaxed.init(jax.random.key(3), model, params, 4)
    mix = jax.jit(jax.value_and_grad(lambda p, f: jnp.sum(relaxed.virtual_tokens(p, model, f, 0) ** 2)))
    params32 = jax.tree.map(lambda x: x.astype(jnp.float32), params)
    (value, grad), (value_ref, grad_ref) = mix(logits, held), mix(logits, params32)
    np.testing.assert_allclose(value, value_ref, rtol=1e-5)
    np.testing.assert_allclose(grad["logits"], grad_ref["logits"], rtol=1e-4, atol=1e-9)
