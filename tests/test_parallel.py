"""Data parallelism: 1, 2 and 4 (fake CPU) devices train the same prompt, with or without micro-batches."""

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
