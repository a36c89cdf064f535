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
