"""GPT-2 against transformers on tiny random configs: tied and untied heads."""

from __future__ import annotations

import pytest

import parity

torch = pytest.importorskip("torch")

VARIANTS = ['gpt2', 'gpt2-untied']


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


def test_original_gpt2_key_names_load(tiny_hf, tmp_path):
    """The hub's `gpt2` weights have no `transformer.` prefix and carry attention-mask buffers."""
    import jax
    import numpy as np
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


@pytest.mark.parametrize("variant", VARIANTS[:1])
def test_adaption_prompt_matches_peft(tiny_hf, variant):
    pytest.importorskip("peft")
    parity.check_adapter_against_peft(*tiny_hf(variant))
