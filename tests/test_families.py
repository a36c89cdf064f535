"""Every architecture against `transformers` (PyTorch, fp32, eager attention), one parametrised file
over the tiny random models of conftest.TINY: logits, greedy generation, the KV cache, the HF state
dict both ways, adaption prompts (PEFT where PEFT has them; a zero gate is the frozen model on every
family that declares them), and what one family alone has (key spellings, refused options).

What each variant exercises is said beside it in conftest.TINY: tied and untied heads, pre- and
post-LayerNorm, OPT's embedding projection and non-affine norms, grouped- and multi-query heads,
rope scalings, sliding windows, q/k biases and norms, (1 + w) norms, soft-capping, partial rotary,
parallel residuals.
"""

from __future__ import annotations

import jax
import jax.numpy as jnp
import numpy as np
import parity
import pytest
from conftest import TINY

torch = pytest.importorskip("torch")

# every variant of the table but the GPT-2-vocabulary ones (those serve tokenizing tests)
VARIANTS = [name for name in TINY if "50k" not in name]
# families whose adaption prompts PEFT implements (peft/tuners/adaption_prompt/config.py)
PEFT_ADAPTION = ["gpt2", "llama", "mistral"]


@pytest.mark.parametrize("variant", VARIANTS)
def test_logits_match_transformers(tiny_hf, variant):
    parity.check_logits(*tiny_hf(variant))


@pytest.mark.parametrize("variant", VARIANTS)
def test_greedy_generation_matches_transformers(tiny_hf, variant):
    parity.check_greedy_generation(*tiny_hf(variant))


@pytest.mark.parametrize("variant", VARIANTS)
def test_cache_equals_recomputation(tiny_hf, variant):
    parity.check_cache(tiny_hf(variant)[1])


@pytest.mark.parametrize("variant", VARIANTS)
def test_state_dict_both_ways(tiny_hf, tmp_path, variant):
    parity.check_state_dict(*tiny_hf(variant), str(tmp_path))


@pytest.mark.parametrize("variant", PEFT_ADAPTION)
def test_adaption_prompt_matches_peft(tiny_hf, variant):
    pytest.importorskip("peft")
    parity.check_adapter_against_peft(*tiny_hf(variant))


# ---- adaption prompts at a zero gate, on every family that declares them -------------------------

def _adaption_cases() -> dict[str, dict]:
    from jaxprompt.models.registry import ARCHITECTURES

    cases = {name: TINY[name] for name in VARIANTS}
    cases["llama-attention-bias"] = {**TINY["llama"], "attention_bias": True}  # o_proj with a bias
    return {name: hf for name, hf in cases.items() if ARCHITECTURES[hf["model_type"]].adaption_prompts}


ADAPTION = _adaption_cases()


@pytest.mark.parametrize("variant", list(ADAPTION))
def test_zero_gate_is_the_frozen_model(variant):
    """At a zero gate (every layer at initialisation, and the layers below the adapted ones) an
    adapted model computes the frozen model's logits, biases included (random, as in published
    checkpoints: the output projection's bias must enter once); a nonzero gate changes them (the
    family's blocks read the adapter)."""
    from jaxprompt.models import Model, positions_from_mask
    from jaxprompt.models.layers.attention import Adapter
    from jaxprompt.models.registry import config_from_hf

    model = Model(config_from_hf(ADAPTION[variant]))
    params = model.init(jax.random.key(0), std=0.2)
    keys = iter(jax.random.split(jax.random.key(1), len(jax.tree.leaves(params))))
    params = jax.tree_util.tree_map_with_path(  # biases and norm offsets away from 0, scales from 1
        lambda path, x: x + 0.2 * jax.random.normal(next(keys), x.shape) if path[-1].key in ("bias", "scale") else x,
        params)
    L, D = model.config.n_layers, model.config.d_model
    tokens = jnp.asarray(np.random.RandomState(0).randint(3, model.config.vocab_size, (2, 9)))
    mask = jnp.ones(tokens.shape, bool)
    embeds, positions = model.embed(params, tokens), positions_from_mask(mask)
    frozen, _ = model.forward(params, embeds, positions, mask)
    prompt = jax.random.normal(jax.random.key(2), (L, 4, D))
    at_init, _ = model.forward(params, embeds, positions, mask, adapter=Adapter(prompt, jnp.zeros((L,))))
    assert np.abs(np.asarray(frozen)).max() > 1.0
    np.testing.assert_allclose(np.asarray(at_init), np.asarray(frozen), atol=1e-5, rtol=0)
    gated, _ = model.forward(params, embeds, positions, mask, adapter=Adapter(prompt, jnp.full((L,), 0.5)))
    assert np.abs(np.asarray(gated) - np.asarray(frozen)).max() > 1e-2


# ---- what one family alone has -------------------------------------------------------------------

def test_original_gpt2_key_names_load(tiny_hf, tmp_path):
    """The hub's `gpt2` weights have no `transformer.` prefix and carry attention-mask buffers."""
    from safetensors.numpy import save_file

    from jaxprompt.models import load_pretrained

    pt_model, directory = tiny_hf("gpt2")
    _, ref = load_pretrained(directory)
    state = {k.removeprefix("transformer."): v.numpy() for k, v in pt_model.state_dict().items() if k != "lm_head.weight"}
    state["h.0.attn.bias"] = np.tril(np.ones((1, 1, 64, 64), np.float32))
    save_file(state, str(tmp_path / "model.safetensors"))
    (tmp_path / "config.json").write_text(open(f"{directory}/config.json").read())
    _, params = load_pretrained(str(tmp_path))
    jax.tree.map(np.testing.assert_array_equal, ref, params)


def test_unsupported_gpt2_options_are_refused():
    from jaxprompt.models import ConfigError, config_from_hf

    for option, value in (("scale_attn_by_inverse_layer_idx", True), ("reorder_and_upcast_attn", True),
                          ("scale_attn_weights", False)):
        with pytest.raises(ConfigError, match=f"GPT-2 option {option}={value!r} is not supported"):
            config_from_hf({"model_type": "gpt2", option: value})


@pytest.mark.parametrize("scaling", [{"rope_type": "yarn", "factor": 4.0}, {"type": "dynamic", "factor": 2.0}])
def test_llama_rope_scaling_it_does_not_compute_is_refused_at_load(scaling):
    from jaxprompt.models.model_config import ConfigError
    from jaxprompt.models.registry import config_from_hf

    hf = {**TINY["llama"], "rope_scaling": scaling}
    kind = scaling.get("rope_type", scaling.get("type"))
    with pytest.raises(ConfigError, match=f"rope_scaling type '{kind}' is not supported .only default, linear, llama3"):
        config_from_hf(hf)
    assert config_from_hf(TINY["llama"]).rope_scaling_dict["rope_type"] == "llama3"
