"""Llama against transformers on tiny random configs: grouped-query and multi-query heads, Llama 3.1 and linear rope scaling, tied and untied heads, an odd vocabulary and head count."""

from __future__ import annotations

import pytest

import parity

torch = pytest.importorskip("torch")

VARIANTS = ['llama', 'llama-mqa-linear']


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


@pytest.mark.parametrize("variant", VARIANTS[:1])
def test_adaption_prompt_matches_peft(tiny_hf, variant):
    pytest.importorskip("peft")
    parity.check_adapter_against_peft(*tiny_hf(variant))


@pytest.mark.parametrize("scaling", [{"rope_type": "yarn", "factor": 4.0}, {"type": "dynamic", "factor": 2.0}])
def test_rope_scaling_it_does_not_compute_is_refused_at_load(scaling):
    from conftest import TINY
    from jaxprompt.models.config import ConfigError
    from jaxprompt.models.registry import config_from_hf

    hf = {**TINY["llama"], "rope_scaling": scaling}
    kind = scaling.get("rope_type", scaling.get("type"))
    with pytest.raises(ConfigError, match=f"rope_scaling type '{kind}' is not supported .only default, linear, llama3"):
        config_from_hf(hf)
    assert config_from_hf(TINY["llama"]).rope_scaling_dict["rope_type"] == "llama3"
