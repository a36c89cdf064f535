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
