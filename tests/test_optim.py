"""Optimizers over the prompt's parts: per-part rates, frozen parts, schedules over the run."""

from __future__ import annotations

import jax
import numpy as np
import optax
import pytest
from conftest import ANTONYM_PAIRS

from jaxprompt.config import OptimizerConfig
from jaxprompt.data.batches import collate
from jaxprompt.data.templates import Template, encode
from jaxprompt.prompts import METHODS, SoftPrompt
from jaxprompt.prompts.loss import prompt_loss
from jaxprompt.settings import SettingError
from jaxprompt.training.optim import make_optimizer
from jaxprompt.training.step import TrainState, make_train_step


def test_parts_can_be_frozen_or_given_their_own_rate(tiny_lm, gpt2_tokenizer):
    model, frozen = tiny_lm
    method = METHODS["ptuning"](length=4, hidden=16)
    prompt = method.init(jax.random.key(0), model, frozen, 4)
    template = Template("Here are two {prompt} {word1} and", " {word2}")
    batch = collate([encode(template, {"word1": a, "word2": b}, gpt2_tokenizer, SoftPrompt(length=4)) for a, b in ANTONYM_PAIRS[:8]],
                    50256)
    loss_fn = prompt_loss(model, method)
    moved = lambda a, b: not all(np.allclose(x, y) for x, y in zip(jax.tree.leaves(a), jax.tree.leaves(b)))
    for cfg, still, changed in ((OptimizerConfig(lr=0.01, frozen_parts=("inputs",)), "inputs", "encoder"),
                                (OptimizerConfig(lr=0.01, part_lr=(("encoder", 0.0),)), "encoder", "inputs")):
        optimizer = make_optimizer(cfg, prompt)
        state, _ = jax.jit(make_train_step(loss_fn, optimizer))(
            TrainState.create(prompt, optimizer, jax.random.PRNGKey(0)), frozen, batch)
        jax.tree.map(np.testing.assert_array_equal, state.params[still], prompt[still])
        assert moved(state.params[changed], prompt[changed])
    with pytest.raises(SettingError, match="--frozen-parts: unknown prompt part.*embeddings.*has encoder, inputs"):
        make_optimizer(OptimizerConfig(frozen_parts=("embeddings",)), prompt)
    with pytest.raises(SettingError, match="--part-lr: unknown prompt part"):
        make_optimizer(OptimizerConfig(part_lr=(("kv", 0.1),)), prompt)


def test_a_decaying_schedule_spans_the_run():
    prompt = {"embeddings": np.zeros((2, 3), np.float32)}
    with pytest.raises(ValueError, match="needs the run's total_steps"):
        make_optimizer(OptimizerConfig(schedule="cosine"), prompt)
    optimizer = make_optimizer(OptimizerConfig(name="sgd", lr=1.0, schedule="linear", clip_norm=None), prompt,
                               total_steps=4)
    state, sizes = optimizer.init(prompt), []
    for _ in range(5):
        updates, state = optimizer.update({"embeddings": np.ones((2, 3), np.float32)}, state, prompt)
        sizes.append(float(-updates["embeddings"][0, 0]))
    np.testing.assert_allclose(sizes, [1.0, 0.75, 0.5, 0.25, 0.0])
    assert isinstance(optimizer, optax.GradientTransformation)


def test_clipping_sees_only_the_trained_parts():
    """A frozen part's huge gradient neither shrinks the trained part's update (the reference: the
    same optimizer over the trained part alone) nor enters the step's logged grad_norm."""
    from jaxprompt.training.optim import trained_only

    prompt = {"inputs": np.ones((2, 3), np.float32), "encoder": {"w": np.ones((3, 3), np.float32)}}
    target = {"inputs": np.zeros((2, 3), np.float32), "encoder": {"w": 1e3 * np.ones((3, 3), np.float32)}}
    loss_fn = lambda p, frozen, batch, rng, step: (sum(jax.numpy.sum((a - b) ** 2) for a, b in zip(
        jax.tree.leaves(p), jax.tree.leaves(target))), 1.0)
    config = OptimizerConfig(lr=0.1, clip_norm=1.0, frozen_parts=("encoder",))
    optimizer = make_optimizer(config, prompt)
    grads = jax.grad(lambda p: loss_fn(p, None, None, None, 0)[0])(prompt)
    updates, _ = optimizer.update(grads, optimizer.init(prompt), prompt)
    alone = make_optimizer(OptimizerConfig(lr=0.1, clip_norm=1.0), {"inputs": prompt["inputs"]})
    reference, _ = alone.update({"inputs": grads["inputs"]}, alone.init({"inputs": prompt["inputs"]}),
                                {"inputs": prompt["inputs"]})
    np.testing.assert_allclose(updates["inputs"], reference["inputs"], rtol=1e-6)
    np.testing.assert_array_equal(updates["encoder"]["w"], 0.0)

    step = jax.jit(make_train_step(trained_only(config, loss_fn), optimizer))
    _, metrics = step(TrainState.create(prompt, optimizer, jax.random.PRNGKey(0)), None, {})
    np.testing.assert_allclose(float(metrics["grad_norm"]), float(np.linalg.norm(grads["inputs"])), rtol=1e-6)
