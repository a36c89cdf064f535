"""Data parallelism (pmap over 1, 2, 4 devices, with or without micro-batches) and frozen weights
sharded over a device mesh (jit) train the same prompt as one device."""

from __future__ import annotations

import os
import subprocess
import sys
import textwrap

from conftest import REPO, TOKENIZER_DIR

DP_SCRIPT = textwrap.dedent("""
    import sys, jax, numpy as np
    sys.path.insert(0, {tests!r})
    from conftest import ANTONYM_PAIRS, tiny_config
    from jaxprompt.config import LoopConfig, OptimizerConfig
    from jaxprompt.data import Batches, Template, common_prefix_length, encode
    from jaxprompt.loop import fit
    from jaxprompt.loss import prompt_loss
    from jaxprompt.models import Model
    from jaxprompt.optim import make_optimizer
    from jaxprompt.prompts import make_method
    from jaxprompt.tokenizer import Tokenizer
    assert jax.device_count() == 4
    tok = Tokenizer.load({tok!r})
    model = Model(tiny_config())
    frozen = model.init(jax.random.key(0), std=0.2)
    t = Template("Here are two {{prompt}} {{word1}} and", " {{word2}}")
    out = {{}}
    for n, micro in ((1, 1), (2, 1), (4, 1), (2, 2)):
        for name in ("soft", "prefix"):
            method = make_method(name, length=4)
            ex = [encode(t, {{"word1": a, "word2": b}}, tok, 4, virtual=name != "prefix") for a, b in ANTONYM_PAIRS]
            prompt = method.init(jax.random.key(1), model, frozen, 4)
            opt = make_optimizer(OptimizerConfig(lr=0.05), prompt)
            r = fit(prompt_loss(model, method, common_prefix_length(ex)), opt, prompt, frozen, Batches(ex, 8, 50256),
                    None, LoopConfig(steps=6), devices=jax.devices()[:n], micro_batches=micro)
            out[(n, micro, name)] = np.concatenate([np.ravel(x) for x in jax.tree.leaves(r.state.params)])
    for name in ("soft", "prefix"):
        for key in ((2, 1), (4, 1), (2, 2)):
            np.testing.assert_allclose(out[(*key, name)], out[(1, 1, name)], atol=2e-6, rtol=1e-5)
            print(name, key, float(np.abs(out[(*key, name)] - out[(1, 1, name)]).max()))
    print("OK")
""")


def test_one_two_four_devices_give_the_same_prompt():
    env = {**os.environ, "XLA_FLAGS": "--xla_force_host_platform_device_count=4", "JAX_PLATFORMS": "cpu"}
    script = DP_SCRIPT.format(tests=str(REPO / "tests"), tok=str(TOKENIZER_DIR))
    proc = subprocess.run([sys.executable, "-c", script], env=env, capture_output=True, text=True, timeout=600)
    assert proc.returncode == 0 and "OK" in proc.stdout, proc.stdout + proc.stderr[-3000:]


MESH_SCRIPT = textwrap.dedent("""
    import sys, jax, numpy as np
    sys.path.insert(0, {tests!r})
    from conftest import ANTONYM_PAIRS, tiny_config
    from jaxprompt.data import Batches, Template, common_prefix_length, encode
    from jaxprompt.loss import prompt_loss
    from jaxprompt.models import Model
    from jaxprompt.config import OptimizerConfig
    from jaxprompt.optim import make_optimizer
    from jaxprompt.parallel import DataParallel, MeshParallel
    from jaxprompt.prompts import make_method
    from jaxprompt.tokenizer import Tokenizer
    from jaxprompt.train import TrainState, make_train_step
    assert jax.device_count() == 8
    tok = Tokenizer.load({tok!r})
    config = tiny_config(d_model=64, n_heads=4, d_ff=128, d_embed=64)
    model = Model(config)
    frozen = model.init(jax.random.key(0), std=0.2)
    t = Template("Here are two {{prompt}} {{word1}} and", " {{word2}}")
    ex = [encode(t, {{"word1": a, "word2": b}}, tok, 4) for a, b in ANTONYM_PAIRS]
    method = make_method("soft", length=4)
    prompt = method.init(jax.random.key(1), model, frozen, 4)
    # plain SGD: its update is linear in the gradient, so only float reassociation differs (Adam's
    # m / sqrt(v) would amplify those 1e-7 differences on coordinates with tiny gradients)
    optimizer = make_optimizer(OptimizerConfig(lr=0.5, name="sgd", clip_norm=None), prompt)
    loss_fn = prompt_loss(model, method, common_prefix_length(ex))
    batches = Batches(ex, 8, 50256)
    fresh = lambda: TrainState.create(prompt, optimizer, jax.random.PRNGKey(0))

    def flat(tree):
        return np.concatenate([np.ravel(np.asarray(x)) for x in jax.tree.leaves(tree)])

    step = jax.jit(make_train_step(loss_fn, optimizer))
    state, losses = fresh(), []
    for s in range(5):
        state, m = step(state, frozen, batches(s))
        losses.append(float(m["loss"]))
    ref_losses, ref_prompt = np.array(losses), flat(state.params)

    import functools, tempfile
    from jaxprompt.models import load_pretrained, save_pretrained
    from jaxprompt.models.convert import TensorSource
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
    for data, model_axis in ((1, 8), (2, 4), (8, 1)):
        mp = MeshParallel(data, model_axis)
        read.clear()
        _, frozen_m = load_pretrained(checkpoint, shardings=functools.partial(mp.frozen_shardings,
                                                                              n_layers=config.n_layers))
        shardings = jax.tree.map(lambda x: x.sharding, frozen_m)
        jax.tree.map(np.testing.assert_array_equal, frozen_m, frozen)
        if model_axis == 8:  # 8 slices per sharded tensor, each an eighth of it
            biggest = max(n for _, n in read)
            assert biggest <= frozen["wte"]["embedding"].nbytes // 8, biggest
        step = mp.train_step(loss_fn, optimizer, shardings)
        state, losses = mp.put_replicated(fresh()), []
        for s in range(5):
            state, m = step(state, frozen_m, mp.put_batch(batches(s)))
            losses.append(float(mp.get(m)["loss"]))
        results[f"mesh {{data}}x{{model_axis}}"] = (np.array(losses), flat(mp.get(state.params)))
        if model_axis == 8:  # each device holds an eighth of the frozen bytes
            total = sum(x.nbytes for x in jax.tree.leaves(frozen))
            for device in jax.devices():
                held = sum(sh.data.nbytes for x in jax.tree.leaves(frozen_m) for sh in x.addressable_shards
                           if sh.device == device)
                assert abs(held / total - 1 / 8) < 0.01 / 8, (device, held / total)
            print("frozen bytes per device", held, "of", total, f"= 1/{{total / held:.4f}}")
    dp = DataParallel(jax.devices())
    step = dp.train_step(loss_fn, optimizer)
    state, frozen_r, losses = dp.replicate(fresh()), dp.replicate(frozen), []
    for s in range(5):
        state, m = step(state, frozen_r, dp.shard(batches(s)))
        losses.append(float(np.asarray(m["loss"])[0]))
    results["pmap 8"] = (np.array(losses), flat(dp.unreplicate(state).params))
    for name, (losses, prompt_after) in results.items():
        print(name, "max loss diff", float(np.abs(losses - ref_losses).max()),
              "max prompt diff", float(np.abs(prompt_after - ref_prompt).max()))
    for name, (losses, prompt_after) in results.items():
        np.testing.assert_allclose(losses, ref_losses, rtol=2e-6, err_msg=name)
        np.testing.assert_allclose(prompt_after, ref_prompt, rtol=0, atol=5e-6, err_msg=name)  # values ~1
    assert np.abs(ref_prompt - flat(prompt)).max() > 0.01  # the prompt did move
    print("OK")
""")


def test_meshes_and_pmap_train_like_one_device():
    """Meshes 1x8, 2x4, 8x1 and pmap over 8 forced CPU devices: the same losses and prompt after
    5 steps as one device; with model=8 every device holds 1/8 of the frozen bytes."""
    env = {**os.environ, "XLA_FLAGS": "--xla_force_host_platform_device_count=8", "JAX_PLATFORMS": "cpu"}
    script = MESH_SCRIPT.format(tests=str(REPO / "tests"), tok=str(TOKENIZER_DIR))
    proc = subprocess.run([sys.executable, "-c", script], env=env, capture_output=True, text=True, timeout=900)
    assert proc.returncode == 0 and "OK" in proc.stdout, proc.stdout + proc.stderr[-3000:]
    print(proc.stdout)
