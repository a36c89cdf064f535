"""Presets and config.json: every preset's parameter count equals transformers' own count for the
same config (built on the meta device: no memory), configs round-trip, unknown types are refused,
and capabilities (adaption prompts) are what an architecture declares."""

from __future__ import annotations

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from jaxprompt.models import ARCHITECTURES, PRESETS, ConfigError, Model, config_from_hf, config_to_hf, preset

torch = pytest.importorskip("torch")


def _transformers_count(hf: dict) -> int:
    from transformers import AutoConfig, AutoModelForCausalLM

    kw = dict(hf)
    config = AutoConfig.for_model(kw.pop("model_type"), **kw)
    with torch.device("meta"):
        model = AutoModelForCausalLM.from_config(config)
    return sum(p.numel() for p in model.parameters())  # parameters() counts a tied head once


@pytest.mark.parametrize("name", list(PRESETS))
def test_preset_parameter_counts_equal_transformers(name):
    model = Model(preset(name))
    shapes = jax.eval_shape(model.init, jax.random.key(0))
    ours = sum(int(np.prod(x.shape)) for x in jax.tree.leaves(shapes))
    assert ours == _transformers_count(PRESETS[name])
    # the forward pass traces at full size too (shapes only)
    logits = jax.eval_shape(lambda p, t: model.logits(p, t), shapes, jax.ShapeDtypeStruct((2, 8), jnp.int32))
    assert logits.shape == (2, 8, model.config.vocab_size) and logits.dtype == jnp.float32


def test_every_family_has_presets_and_the_named_ones_exist():
    assert {c["model_type"] for c in PRESETS.values()} == set(ARCHITECTURES)
    for name in ("meta-llama/Llama-3.2-1B", "meta-llama/Llama-3.1-8B", "mistralai/Mistral-7B-v0.3", "Qwen/Qwen2.5-0.5B",
                 "Qwen/Qwen2.5-7B", "Qwen/Qwen3-0.6B", "google/gemma-2b", "google/gemma-2-2b",
                 "EleutherAI/pythia-160m", "EleutherAI/pythia-1.4b"):
        assert name in PRESETS


@pytest.mark.parametrize("name", list(PRESETS))
def test_config_round_trip(name):
    config = preset(name)
    assert config_from_hf(config_to_hf(config)) == config


def test_config_read_by_transformers_is_the_same_model(tmp_path):
    """What we write as config.json, transformers reads as the same architecture (rope scaling and
    windows included): a tiny model saved by jaxprompt gives transformers' logits (see parity)."""
    from transformers import AutoConfig

    for name in ("meta-llama/Llama-3.1-8B", "google/gemma-2-2b", "EleutherAI/pythia-160m", "Qwen/Qwen2.5-7B"):
        written = config_to_hf(preset(name))
        hf = AutoConfig.for_model(**written)
        assert config_from_hf(hf.to_dict()) == preset(name), name


def test_unknown_model_type():
    with pytest.raises(ConfigError, match="unknown model_type 'bert'.*supports gpt2, opt, llama"):
        config_from_hf({"model_type": "bert"})
    with pytest.raises(ConfigError, match="no preset"):
        preset("gpt5")


def test_adaption_prompts_are_refused_where_the_architecture_lacks_them(monkeypatch):
    """Adaption prompts are a capability an architecture declares; without it they are refused in
    one line naming the families that have it (a block ignoring them would train a zero gradient)."""
    import dataclasses

    from conftest import TINY
    from jaxprompt.models.layers import Adapter

    assert all(arch.adaption_prompts for arch in ARCHITECTURES.values())  # every family today
    monkeypatch.setitem(ARCHITECTURES, "gpt2", dataclasses.replace(ARCHITECTURES["gpt2"], adaption_prompts=False))
    model = Model(config_from_hf(TINY["gpt2"]))
    params = model.init(jax.random.key(0))
    tokens = jnp.ones((1, 3), jnp.int32)
    adapter = Adapter(jnp.zeros((2, 4, 32)), jnp.zeros((2,)))
    with pytest.raises(ConfigError, match="not supported by gpt2 models; families that support them: opt, llama, ") as e:
        model.forward(params, model.embed(params, tokens), jnp.zeros((1, 3), jnp.int32), jnp.ones((1, 3), bool),
                      adapter=adapter)
    assert "\n" not in str(e.value)
    model.forward(params, model.embed(params, tokens), jnp.zeros((1, 3), jnp.int32), jnp.ones((1, 3), bool))
