"""The pure train step: micro-batches give the whole batch's gradient, a non-finite update is skipped."""

from __future__ import annotations

import jax
import jax.numpy as jnp
import numpy as np
import optax
import pytest
from conftest import ANTONYM_PAIRS

from jaxprompt.data.batches import collate
from jaxprompt.data.templates import Template, encode
from jaxprompt.prompts import METHODS, SoftPrompt
from jaxprompt.prompts.loss import prompt_loss
from jaxprompt.training.step import TrainState, make_train_step, summed_loss_and_grads

TEMPLATE = Template("Here are two {prompt} {word1} and", " {word2}")
P = 4
# targets of 1 token in one half of the batch and of several in the other
LONG_TARGETS = [("aphelion", "perihelion"), ("utopia", "dystopia"), ("synonym", "antonym"),
                ("hyperbole", "understatement")]


def test_micro_batches_give_the_full_batch_gradient(tiny_lm, gpt2_tokenizer):
    model, frozen = tiny_lm
    method = METHODS["soft"](length=P)
    prompt = method.init(jax.random.key(0), model, frozen, P)
    rows = LONG_TARGETS + ANTONYM_PAIRS[:4]
    examples = [encode(TEMPLATE, {"word1": a, "word2": b}, gpt2_tokenizer, SoftPrompt(length=P)) for a, b in rows]
    counts = [sum(e.n_target for e in examples[:4]), sum(e.n_target for e in examples[4:])]
    assert counts[0] > 2 * counts[1]  # unequal halves: a mean of means would be wrong
    batch = collate(examples, 50256)
    loss_fn = prompt_loss(model, method)
    mean_loss = jax.jit(lambda p, f, b: jnp.divide(*loss_fn(p, f, b, None, 0)))
    full = jax.jit(jax.grad(mean_loss))(prompt, frozen, batch)["embeddings"]  # the reference: one pass over the batch

    loss_sum, count, grad_sum = jax.jit(summed_loss_and_grads(loss_fn, micro_batches=2))(
        prompt, frozen, batch, jax.random.key(0), 0)
    accumulated = grad_sum["embeddings"] / count
    error = lambda g: float(np.linalg.norm(g - full) / np.linalg.norm(full))
    assert float(count) == sum(counts) and error(accumulated) < 1e-5  # measured 1.2e-6 (float32 sums)

    sgd = optax.sgd(1.0)  # and the step applies exactly that gradient
    state = TrainState.create(prompt, sgd, jax.random.PRNGKey(0))
    stepped, metrics = jax.jit(make_train_step(loss_fn, sgd, micro_batches=2))(state, frozen, batch)
    assert error(prompt["embeddings"] - stepped.params["embeddings"]) < 1e-5  # measured 1.2e-6
    np.testing.assert_allclose(metrics["loss"], mean_loss(prompt, frozen, batch), rtol=1e-6)

    halves = [jax.tree.map(lambda x: x[:4], batch), jax.tree.map(lambda x: x[4:], batch)]
    half_grad = jax.jit(jax.grad(mean_loss))
    mean_of_means = (half_grad(prompt, frozen, halves[0])["embeddings"]
                     + half_grad(prompt, frozen, halves[1])["embeddings"]) / 2
    # what optax.MultiSteps would apply is far off (measured 0.62): the tests above tell them apart
    assert error(mean_of_means) > 0.1


@pytest.mark.filterwarnings("ignore:overflow encountered in cast")  # the point of the test
def test_a_step_that_would_make_the_prompt_non_finite_is_skipped(tiny_lm, gpt2_tokenizer):
    """Loss and gradient are finite here; only the updated prompt overflows (lr 1e39 in float32)."""
    model, frozen = tiny_lm
    method = METHODS["soft"](length=P)
    prompt = method.init(jax.random.key(0), model, frozen, P)
    batch = collate([encode(TEMPLATE, {"word1": a, "word2": b}, gpt2_tokenizer, SoftPrompt(length=P)) for a, b in ANTONYM_PAIRS[:4]],
                    50256)
    sgd = optax.sgd(1e39)
    state = TrainState.create(prompt, sgd, jax.random.PRNGKey(0))
    stepped, metrics = jax.jit(make_train_step(prompt_loss(model, method), sgd))(state, frozen, batch)
    assert np.isfinite(float(metrics["loss"])) and np.isfinite(float(metrics["grad_norm"]))
    assert not bool(metrics["finite"])
    np.testing.assert_array_equal(stepped.params["embeddings"], prompt["embeddings"])
    assert int(stepped.step) == 1
