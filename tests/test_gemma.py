"""Gemma against transformers on tiny random configs: (1 + w) norms, scaled embeddings, GeGLU, one key/value head, head width 16 at width 32."""

from __future__ import annotations

import pytest

import parity

torch = pytest.importorskip("torch")

VARIANTS = ['gemma']


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
