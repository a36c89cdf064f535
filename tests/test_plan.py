"""The memory plan: from shapes alone, it agrees with the compiled training step, shards frozen
weights as the mesh does, and finds the smallest model axis that fits."""

from __future__ import annotations

import jax
import pytest

from jaxprompt.plan import candidate_meshes, parse_bytes, plan, plans, smallest_model_axis


def test_parse_bytes():
    assert parse_bytes("80GB") == 80 * 10**9 and parse_bytes("16GiB") == 16 * 2**30 and parse_bytes("512") == 512
    for bad in ("lots", "-3GB", "0"):
        with pytest.raises(ValueError, match="memory size"):
            parse_bytes(bad)


def test_plan_agrees_with_the_real_training_step(tiny_model_dir):
    """The plan of one device vs the memory XLA assigns to the step `fit` really runs (pmap, real
    arrays): within 10%."""
    from jaxprompt.data import Encoded, collate
    from jaxprompt.loss import prompt_loss
    from jaxprompt.models import Model, load_pretrained
    from jaxprompt.optim import OptimizerConfig, make_optimizer
    from jaxprompt.parallel import DataParallel
    from jaxprompt.prompts import make_method
    from jaxprompt.train import TrainState

    predicted = plan(tiny_model_dir, 1, 1, 1, batch_size=16, prompt_length=8, text_tokens=24, dtype="float32")
    config, frozen = load_pretrained(tiny_model_dir)
    model, method = Model(config), make_method("soft", length=8)
    prompt = method.init(jax.random.key(0), model, frozen, 8)
    optimizer = make_optimizer(OptimizerConfig(), prompt)
    examples = [Encoded([0] * 8 + list(range(100, 124)), list(range(8)) + [-1] * 24, 4) for _ in range(16)]
    dp = DataParallel(jax.devices()[:1])
    step = dp.train_step(prompt_loss(model, method, 8), optimizer)
    state = dp.replicate(TrainState.create(prompt, optimizer, jax.random.PRNGKey(0)))
    analysis = step.lower(state, dp.replicate(frozen), dp.shard(collate(examples, 0, shared_len=8))).compile() \
        .memory_analysis()
    real = (analysis.argument_size_in_bytes + analysis.temp_size_in_bytes + analysis.output_size_in_bytes
            - analysis.alias_size_in_bytes)
    assert abs(predicted.total_bytes / real - 1) < 0.10, (predicted.total_bytes, real)
    assert predicted.frozen_bytes == sum(x.nbytes for x in jax.tree.leaves(frozen))


def test_eight_billion_on_eight_devices():
    """Llama-3.1-8B in bf16 over 8 virtual devices (model=4): a quarter of the weights per device."""
    p = plan("meta-llama/Llama-3.1-8B", devices=8, data=2, model_axis=4, batch_size=8, dtype="bfloat16")
    assert p.frozen_total_bytes == 8_030_261_248 * 2
    assert abs(p.frozen_bytes / (p.frozen_total_bytes / 4) - 1) < 0.01
    assert p.temp_upper_bound and p.total_bytes > p.frozen_bytes + p.temp_bytes
    assert "model=4" in p.table(parse_bytes("80GB")) and "fits" in p.table(parse_bytes("80GB"))


def test_smallest_model_axis_that_fits():
    """Pythia-70m (weights dominate a short batch) on 4 devices: each doubling of the model axis saves
    memory; the search returns the smallest axis within budget, or none."""
    meshes = candidate_meshes(4, batch_size=8)
    assert meshes == [(4, 1), (2, 2), (1, 4)]
    found = plans("EleutherAI/pythia-70m", 4, meshes, batch_size=8, prompt_length=4, text_tokens=8, dtype="float32")
    by_axis = {p.model_axis: p for p in found}
    assert by_axis[1].total_bytes > by_axis[2].total_bytes > by_axis[4].total_bytes
    budget = (by_axis[1].total_bytes + by_axis[2].total_bytes) // 2  # room for model=2, not model=1
    assert smallest_model_axis(found, budget).model_axis == 2
    assert smallest_model_axis(found, by_axis[4].total_bytes // 2) is None
