"""GPT-NeoX / Pythia against transformers on tiny random configs: partial rotary (a quarter and a half of each head), parallel and sequential residuals, untied head."""

from __future__ import annotations

import pytest

import parity

torch = pytest.importorskip("torch")

VARIANTS = ['gpt_neox', 'gpt_neox-sequential']


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
