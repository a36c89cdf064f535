"""Both strategies train, through `fit`, the prompt one device trains: pmap over 1, 2, 4 and 8
devices (with or without micro-batches), and frozen weights sharded over meshes 1x8, 2x4 and 8x1,
loaded straight into shards, computed with where they lie or gathered layer by layer (FSDP). One subprocess with 8 forced CPU devices."""

from __future__ import annotations

import os
import subprocess
import sys
import textwrap

import jax
import numpy as np
import pytest
from conftest import FAST_COMPILE, REPO, TOKENIZER_DIR

from jaxprompt.parallel.strategies import MeshParallel, fsdp_spec, parse_mesh

SCRIPT = textwrap.dedent("""
    import functools, sys, tempfile, jax, numpy as np
    sys.path.insert(0, {tests!r})
    from conftest import ANTONYM_PAIRS, tiny_config
    from jaxprompt.config import LoopConfig, OptimizerConfig
    from jaxprompt.data.batches import Batches
    from jaxprompt.data.templates import Template, common_prefix_length, encode
    from jaxprompt.data.tokenizer import Tokenizer
    from jaxprompt.models import Model, load_pretrained, save_pretrained
    from jaxprompt.models.loading import TensorSource
    from jaxprompt.parallel.strategies import MeshParallel
    from jaxprompt.prompts import METHODS
    from jaxprompt.prompts.loss import prompt_loss
    from jaxprompt.training.loop import fit
    from jaxprompt.training.optim import make_optimizer
    assert jax.device_count() == 8
    tok = Tokenizer.load({tok!r})
    t = Template("Here are two {{prompt}} {{word1}} and", " {{word2}}")
    flat = lambda tree: np.concatenate([np.ravel(np.asarray(x)) for x in jax.tree.leaves(tree)])

    # ---- pmap over 1, 2, 4 devices (Adam, soft and prefix prompts, micro-batches) ----
    model = Model(tiny_config())
    frozen = model.init(jax.random.key(0), std=0.2)
    out = {{}}
    for n, micro in ((1, 1), (2, 1), (4, 1), (2, 2)):
        for name in ("soft", "prefix"):
            method = METHODS[name](length=4)
            ex = [encode(t, {{"word1": a, "word2": b}}, tok, method) for a, b in ANTONYM_PAIRS]
            prompt = method.init(jax.random.key(1), model, frozen, 4)
            opt = make_optimizer(OptimizerConfig(lr=0.05), prompt)
            r = fit(prompt_loss(model, method), opt, prompt, frozen,
                    Batches(ex, 8, 50256, shared_len=common_prefix_length(ex)),
                    None, LoopConfig(steps=6), devices=jax.devices()[:n], micro_batches=micro)
            out[(n, micro, name)] = flat(r.state.params)
    for name in ("soft", "prefix"):
        for key in ((2, 1), (4, 1), (2, 2)):
            print("pmap", name, key, "max prompt diff", float(np.abs(out[(*key, name)] - out[(1, 1, name)]).max()))
            np.testing.assert_allclose(out[(*key, name)], out[(1, 1, name)], atol=2e-6, rtol=1e-5)

    # ---- meshes 1x8, 2x4, 8x1 and pmap over 8 vs one device ----
    config = tiny_config(d_model=64, n_heads=4, d_ff=128, d_embed=64)
    model = Model(config)
    frozen = model.init(jax.random.key(0), std=0.2)
    method = METHODS["soft"](length=4)
    ex = [encode(t, {{"word1": a, "word2": b}}, tok, method) for a, b in ANTONYM_PAIRS]
    prompt = method.init(jax.random.key(1), model, frozen, 4)
    # plain SGD: its update is linear in the gradient, so only float reassociation differs (Adam's
    # m / sqrt(v) would amplify those 1e-7 differences on coordinates with tiny gradients)
    optimizer = make_optimizer(OptimizerConfig(lr=0.5, name="sgd", clip_norm=None), prompt)
    loss_fn = prompt_loss(model, method)
    batches = Batches(ex, 8, 50256, shared_len=common_prefix_length(ex))

    def train(frozen, micro_batches=1, **where):
        r = fit(loss_fn, optimizer, prompt, frozen, batches, None, LoopConfig(steps=5, log_every=1),
                micro_batches=micro_batches, **where)
        return np.array([h["train_loss"] for h in r.history]), flat(r.state.params)

    ref_losses, ref_prompt = train(frozen, devices=jax.devices()[:1])
    assert len(ref_losses) == 5

    checkpoint = tempfile.mkdtemp()
    save_pretrained(config, frozen, checkpoint)
    read = []  # (tensor, bytes) of every read: slices, never a whole tensor twice
    original_get = TensorSource.get
    def counting_get(self, key, index=None):
        x = original_get(self, key, index)
        read.append((key, x.nbytes))
        return x
    TensorSource.get = counting_get

    results = {{}}
    for data, model_axis, micro, fsdp in ((1, 8, 1, False), (2, 4, 1, False), (8, 1, 1, False), (2, 4, 2, False),
                                          (1, 8, 1, True), (2, 4, 1, True)):
        mp = MeshParallel(data, model_axis, n_layers=config.n_layers, fsdp=fsdp)
        read.clear()
        _, frozen_m = load_pretrained(checkpoint, shardings=mp.frozen_shardings)
        jax.tree.map(np.testing.assert_array_equal, frozen_m, frozen)
        if model_axis == 8 and not fsdp:  # 8 slices per sharded tensor, each an eighth of it
            biggest = max(n for _, n in read)
            assert biggest <= frozen["wte"]["embedding"].nbytes // 8, biggest
            total = sum(x.nbytes for x in jax.tree.leaves(frozen))
            for device in jax.devices():  # each device holds an eighth of the frozen bytes
                held = sum(sh.data.nbytes for x in jax.tree.leaves(frozen_m) for sh in x.addressable_shards
                           if sh.device == device)
                assert abs(held / total - 1 / 8) < 0.01 / 8, (device, held / total)
            print("frozen bytes per device", held, "of", total, f"= 1/{{total / held:.4f}}")
        layout = "fsdp" if fsdp else "model"
        results[f"mesh data={{data}},{{layout}}={{model_axis}}, {{micro}} micro-batch(es)"] = train(frozen_m, micro,
                                                                                                  strategy=mp)
    results["pmap 8"] = train(frozen, devices=jax.devices())
    for name, (losses, prompt_after) in results.items():
        print(name, "max loss diff", float(np.abs(losses - ref_losses).max()),
              "max prompt diff", float(np.abs(prompt_after - ref_prompt).max()))
    for name, (losses, prompt_after) in results.items():
        np.testing.assert_allclose(losses, ref_losses, rtol=2e-6, err_msg=name)
        np.testing.assert_allclose(prompt_after, ref_prompt, rtol=0, atol=5e-6, err_msg=name)  # values ~1
    assert np.abs(ref_prompt - flat(prompt)).max() > 0.01  # the prompt did move
    print("OK")
""")


def test_every_strategy_trains_like_one_device():
    """pmap over 2 and 4 devices (and micro-batches) equals 1 device for soft and prefix prompts
    under Adam; meshes 1x8, 2x4 (also with micro-batches), 8x1, FSDP over 1x8 and 2x4, and pmap over 8 give the same
    losses and prompt after 5 SGD steps as one device; with model=8 every device holds 1/8 of the
    frozen bytes, loaded by slices."""
    env = {**os.environ, "XLA_FLAGS": f"{FAST_COMPILE} --xla_force_host_platform_device_count=8", "JAX_PLATFORMS": "cpu"}
    script = SCRIPT.format(tests=str(REPO / "tests"), tok=str(TOKENIZER_DIR))
    proc = subprocess.run([sys.executable, "-c", script], env=env, capture_output=True, text=True, timeout=900)
    assert proc.returncode == 0 and "OK" in proc.stdout, proc.stdout + proc.stderr[-3000:]
    print(proc.stdout)


def test_fsdp_spec_splits_the_largest_divisible_axis_never_the_layers():
    P = jax.sharding.PartitionSpec
    assert fsdp_spec((50257, 64), 8, n_layers=2) == P(None, "model")  # the vocabulary does not divide
    assert fsdp_spec((2, 64, 192), 4, n_layers=2) == P(None, None, "model")  # layer axis kept whole
    assert fsdp_spec((4, 64), 4, n_layers=4) == P(None, "model")
    assert fsdp_spec((63,), 4, n_layers=2) == P() and fsdp_spec((64, 64), 1, n_layers=2) == P()


def test_every_preset_splits_evenly_over_eight_model_shards():
    """FSDP over model=8 leaves each device an eighth of every preset's frozen weights (to 1%):
    no large leaf stays whole."""
    import math

    from jaxprompt.models import PRESETS, Model, preset

    for name in PRESETS:
        config = preset(name)
        shapes = jax.tree.leaves(Model(config).param_shapes())
        total = sum(math.prod(x.shape) for x in shapes)
        held = sum(math.prod(x.shape) // (8 if "model" in fsdp_spec(x.shape, 8, config.n_layers) else 1)
                   for x in shapes)
        assert abs(held / total - 1 / 8) < 0.01 / 8, (name, held / total)


def test_mesh_settings_are_checked():
    assert parse_mesh("data=2,model=4") == (2, 4, False) and parse_mesh("model=8") == (1, 8, False)
    assert parse_mesh("data=2,fsdp=4") == (2, 4, True) and str(parse_mesh("fsdp=8")) == "data=1,fsdp=8"
    assert parse_mesh("data=2,fsdp=4").batch_split == 8 and parse_mesh("data=2,model=4").batch_split == 2
    for bad in ("data=0", "data=2,data=2", "pipeline=2", "data=two", "", "model=2,fsdp=2"):
        with pytest.raises(ValueError, match="is not data=A,model=B or data=A,fsdp=B"):
            parse_mesh(bad)
    with pytest.raises(ValueError, match="mesh data=2,model=1 needs 2 devices; there are 1"):
        MeshParallel(2, 1)


def test_one_device_mesh_places_and_reads_back():
    """put_state/put_frozen/put_batch/get round-trip host values on a one-device mesh."""
    mp = MeshParallel(1, 1, n_layers=2)
    tree = {"a": np.arange(6, dtype=np.float32).reshape(2, 3), "b": np.int32(4)}
    jax.tree.map(np.testing.assert_array_equal, mp.get(mp.put_state(tree)), tree)
    frozen = mp.put_frozen({"w": np.ones((2, 4), np.float32)})
    assert mp.put_frozen(frozen)["w"] is frozen["w"]  # already placed: kept
    batch = mp.put_batch({"tokens": np.arange(8).reshape(4, 2)})
    np.testing.assert_array_equal(mp.get(batch)["tokens"], np.arange(8).reshape(4, 2))


def test_one_device_pmap_takes_the_frozen_weights_without_a_copy():
    """On one device the pmapped step broadcasts the frozen weights (`put_frozen` returns the very
    arrays: `replicate` would copy the whole model into a [1, ...] stack beside the session's), and
    gives the plain jitted step's state and loss."""
    from conftest import tiny_config

    from jaxprompt.config import OptimizerConfig
    from jaxprompt.data.batches import collate
    from jaxprompt.data.templates import Encoded
    from jaxprompt.models import Model
    from jaxprompt.parallel.strategies import DataParallel
    from jaxprompt.prompts import METHODS
    from jaxprompt.prompts.loss import prompt_loss
    from jaxprompt.training.optim import make_optimizer
    from jaxprompt.training.step import TrainState, make_train_step

    model, method = Model(tiny_config()), METHODS["soft"](length=2)
    frozen = model.init(jax.random.key(0), std=0.2)
    prompt = method.init(jax.random.key(1), model, frozen, 2)
    optimizer = make_optimizer(OptimizerConfig(lr=0.1), prompt)
    batch = collate([Encoded([5, 0, 0, 7, 9, 11], [-1, 0, 1, -1, -1, -1], 2)] * 2, 0)
    dp = DataParallel(jax.devices()[:1])
    placed = dp.put_frozen(frozen)
    assert all(a is b for a, b in zip(jax.tree.leaves(placed), jax.tree.leaves(frozen)))
    loss_fn = prompt_loss(model, method)
    state, metrics = dp.train_step(loss_fn, optimizer)(dp.put_state(TrainState.create(prompt, optimizer,
                                                       jax.random.PRNGKey(0))), placed, dp.put_batch(batch))
    ref_state, ref_metrics = jax.jit(make_train_step(loss_fn, optimizer))(
        TrainState.create(prompt, optimizer, jax.random.PRNGKey(0)), frozen, batch)
    np.testing.assert_allclose(dp.get(metrics)["loss"], ref_metrics["loss"], rtol=1e-6)
    jax.tree.map(lambda a, b: np.testing.assert_allclose(a, b, rtol=1e-5, atol=1e-7), dp.get(state.params),
                 jax.tree.map(np.asarray, ref_state.params))


QUANTIZED_SCRIPT = textwrap.dedent("""
    import sys, tempfile, jax, numpy as np
    sys.path.insert(0, {tests!r})
    from conftest import ANTONYM_PAIRS, tiny_config
    from jaxprompt.config import LoopConfig, OptimizerConfig
    from jaxprompt.data.batches import Batches
    from jaxprompt.data.templates import Template, common_prefix_length, encode
    from jaxprompt.data.tokenizer import Tokenizer
    from jaxprompt.models import Model, load_pretrained, save_pretrained
    from jaxprompt.models.layers.quantized import is_quantized
    from jaxprompt.models.quantize import Scheme, quantize_params
    from jaxprompt.parallel.strategies import MeshParallel
    from jaxprompt.prompts import METHODS
    from jaxprompt.prompts.loss import prompt_loss
    from jaxprompt.training.loop import fit
    from jaxprompt.training.optim import make_optimizer
    assert jax.device_count() == 8
    tok = Tokenizer.load({tok!r})
    config = tiny_config(d_model=64, n_heads=4, d_ff=128, d_embed=64)
    floats = Model(config).init(jax.random.key(0), std=0.2)
    checkpoint = tempfile.mkdtemp()
    save_pretrained(config, floats, checkpoint)
    method = METHODS["soft"](length=4)
    ex = [encode(Template("Here are two {{prompt}} {{word1}} and", " {{word2}}"), {{"word1": a, "word2": b}}, tok, method)
          for a, b in ANTONYM_PAIRS]
    model = Model(config)
    prompt = method.init(jax.random.key(1), model, floats, 4)
    optimizer = make_optimizer(OptimizerConfig(lr=0.5, name="sgd", clip_norm=None), prompt)

    def train(frozen, **where):
        r = fit(prompt_loss(model, method), optimizer, prompt, frozen,
                Batches(ex, 8, 50256, shared_len=common_prefix_length(ex)), None, LoopConfig(steps=3, log_every=1),
                **where)
        return np.array([h["train_loss"] for h in r.history])

    # int8's per-channel scales [L, 1, O] stay whole where values split along I; NF4's split with them
    for scheme, meshes in ((Scheme("int8"), ((1, 8, False),)), (Scheme("nf4", 16), ((1, 8, False), (2, 4, False),
                                                                                   (2, 4, True)))):
        quantized = quantize_params(config, floats, scheme)
        ref = train(quantized, devices=jax.devices()[:1])
        for data, model_axis, fsdp in meshes:
            mp = MeshParallel(data, model_axis, n_layers=config.n_layers, fsdp=fsdp)
            _, sharded = load_pretrained(checkpoint, shardings=mp.frozen_shardings, quantize=scheme)
            jax.tree.map(np.testing.assert_array_equal, sharded, quantized)
            for q in jax.tree.leaves(sharded, is_leaf=is_quantized):
                if is_quantized(q):  # the scales split with their values where they divide
                    values, scales = q.values.sharding.spec, q.scales.sharding.spec
                    for axis, name in enumerate(values):
                        divides = q.scales.shape[axis] % model_axis == 0
                        assert scales[axis] == (name if divides else None), (values, scales)
            losses = train(sharded, strategy=mp)
            print(scheme, "mesh", data, model_axis, fsdp, "max loss diff", float(np.abs(losses - ref).max()))
            np.testing.assert_allclose(losses, ref, rtol=2e-6)
    losses = train(quantized, devices=jax.devices()[:2])
    print(scheme, "pmap 2 max loss diff", float(np.abs(losses - ref).max()))
    np.testing.assert_allclose(losses, ref, rtol=2e-6)
    print("OK")
""")


@pytest.mark.slow
def test_quantized_weights_load_into_shards_and_train_like_one_device():
    """int8 (mesh 1x8) and NF4 (meshes 1x8, 2x4 and FSDP 2x4) weights loaded straight into shards
    are the integers and scales quantizing in memory gives, each kernel's scales split along its
    values' axis wherever they divide, and 3 SGD steps give the one-device losses there and (NF4)
    under pmap over 2 devices. One subprocess with 8 forced CPU devices."""
    env = {**os.environ, "XLA_FLAGS": f"{FAST_COMPILE} --xla_force_host_platform_device_count=8", "JAX_PLATFORMS": "cpu"}
    script = QUANTIZED_SCRIPT.format(tests=str(REPO / "tests"), tok=str(TOKENIZER_DIR))
    proc = subprocess.run([sys.executable, "-c", script], env=env, capture_output=True, text=True, timeout=900)
    assert proc.returncode == 0 and "OK" in proc.stdout, proc.stdout + proc.stderr[-3000:]
    print(proc.stdout)
