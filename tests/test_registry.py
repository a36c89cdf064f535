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


# Values of each model's published config.json on the Hugging Face hub (written here by hand, not
# read from the presets), and its published parameter count: exact where the model card or paper
# gives it to the parameter (GPT-2, Pythia's paper, Llama and Mistral's safetensors index), else as
# the card rounds it.
PUBLISHED = {
    "gpt2": ({"n_embd": 768, "n_layer": 12, "n_head": 12, "vocab_size": 50257, "n_positions": 1024}, 124_439_808),
    "distilgpt2": ({"n_embd": 768, "n_layer": 6, "n_head": 12, "vocab_size": 50257}, 81_912_576),
    "gpt2-medium": ({"n_embd": 1024, "n_layer": 24, "n_head": 16, "vocab_size": 50257}, 354_823_168),
    "gpt2-large": ({"n_embd": 1280, "n_layer": 36, "n_head": 20, "vocab_size": 50257}, 774_030_080),
    "gpt2-xl": ({"n_embd": 1600, "n_layer": 48, "n_head": 25, "vocab_size": 50257}, 1_557_611_200),
    "facebook/opt-125m": ({"hidden_size": 768, "num_hidden_layers": 12, "num_attention_heads": 12, "ffn_dim": 3072,
                           "vocab_size": 50272, "max_position_embeddings": 2048}, None),
    "facebook/opt-350m": ({"hidden_size": 1024, "num_hidden_layers": 24, "num_attention_heads": 16, "ffn_dim": 4096,
                           "word_embed_proj_dim": 512, "do_layer_norm_before": False, "vocab_size": 50272}, None),
    "facebook/opt-1.3b": ({"hidden_size": 2048, "num_hidden_layers": 24, "num_attention_heads": 32, "ffn_dim": 8192},
                          None),
    "facebook/opt-2.7b": ({"hidden_size": 2560, "num_hidden_layers": 32, "num_attention_heads": 32, "ffn_dim": 10240},
                          None),
    "facebook/opt-6.7b": ({"hidden_size": 4096, "num_hidden_layers": 32, "num_attention_heads": 32, "ffn_dim": 16384},
                          None),
    "meta-llama/Llama-2-7b-hf": ({"hidden_size": 4096, "intermediate_size": 11008, "num_hidden_layers": 32,
                                  "num_attention_heads": 32, "num_key_value_heads": 32, "vocab_size": 32000,
                                  "max_position_embeddings": 4096, "tie_word_embeddings": False}, 6_738_415_616),
    "meta-llama/Llama-3.2-1B": ({"hidden_size": 2048, "intermediate_size": 8192, "num_hidden_layers": 16,
                                 "num_attention_heads": 32, "num_key_value_heads": 8, "head_dim": 64,
                                 "vocab_size": 128256, "rope_theta": 500000.0, "tie_word_embeddings": True,
                                 "rope_scaling": {"factor": 32.0, "high_freq_factor": 4.0, "low_freq_factor": 1.0,
                                                  "original_max_position_embeddings": 8192, "rope_type": "llama3"}},
                                1_235_814_400),
    "meta-llama/Llama-3.2-3B": ({"hidden_size": 3072, "intermediate_size": 8192, "num_hidden_layers": 28,
                                 "num_attention_heads": 24, "num_key_value_heads": 8, "head_dim": 128,
                                 "vocab_size": 128256, "tie_word_embeddings": True}, None),
    "meta-llama/Llama-3.1-8B": ({"hidden_size": 4096, "intermediate_size": 14336, "num_hidden_layers": 32,
                                 "num_attention_heads": 32, "num_key_value_heads": 8, "vocab_size": 128256,
                                 "tie_word_embeddings": False,
                                 "rope_scaling": {"factor": 8.0, "high_freq_factor": 4.0, "low_freq_factor": 1.0,
                                                  "original_max_position_embeddings": 8192, "rope_type": "llama3"}},
                                8_030_261_248),
    "mistralai/Mistral-7B-v0.1": ({"hidden_size": 4096, "intermediate_size": 14336, "num_hidden_layers": 32,
                                   "num_key_value_heads": 8, "sliding_window": 4096, "vocab_size": 32000,
                                   "rope_theta": 10000.0}, 7_241_732_096),
    "mistralai/Mistral-7B-v0.3": ({"vocab_size": 32768, "rope_theta": 1000000.0, "sliding_window": None,
                                   "num_key_value_heads": 8}, 7_248_023_552),
    "Qwen/Qwen2.5-0.5B": ({"hidden_size": 896, "intermediate_size": 4864, "num_hidden_layers": 24,
                           "num_attention_heads": 14, "num_key_value_heads": 2, "vocab_size": 151936,
                           "tie_word_embeddings": True, "rope_theta": 1000000.0}, 0.49e9),
    "Qwen/Qwen2.5-7B": ({"hidden_size": 3584, "intermediate_size": 18944, "num_hidden_layers": 28,
                         "num_attention_heads": 28, "num_key_value_heads": 4, "vocab_size": 152064,
                         "tie_word_embeddings": False}, 7.61e9),
    "Qwen/Qwen3-0.6B": ({"hidden_size": 1024, "intermediate_size": 3072, "num_hidden_layers": 28,
                         "num_attention_heads": 16, "num_key_value_heads": 8, "head_dim": 128, "vocab_size": 151936,
                         "max_position_embeddings": 40960, "tie_word_embeddings": True}, 0.6e9),
    "google/gemma-2b": ({"hidden_size": 2048, "intermediate_size": 16384, "num_hidden_layers": 18,
                         "num_attention_heads": 8, "num_key_value_heads": 1, "head_dim": 256, "vocab_size": 256000},
                        2.51e9),
    "google/gemma-7b": ({"hidden_size": 3072, "intermediate_size": 24576, "num_hidden_layers": 28,
                         "num_attention_heads": 16, "num_key_value_heads": 16, "head_dim": 256}, 8.54e9),
    "google/gemma-2-2b": ({"hidden_size": 2304, "intermediate_size": 9216, "num_hidden_layers": 26,
                           "num_attention_heads": 8, "num_key_value_heads": 4, "head_dim": 256,
                           "query_pre_attn_scalar": 256, "sliding_window": 4096, "attn_logit_softcapping": 50.0,
                           "final_logit_softcapping": 30.0}, 2.61e9),
    "google/gemma-2-9b": ({"hidden_size": 3584, "intermediate_size": 14336, "num_hidden_layers": 42,
                           "num_attention_heads": 16, "num_key_value_heads": 8, "head_dim": 256,
                           "query_pre_attn_scalar": 256}, None),
    "EleutherAI/pythia-70m": ({"hidden_size": 512, "num_hidden_layers": 6, "num_attention_heads": 8,
                               "vocab_size": 50304, "rotary_pct": 0.25}, 70_426_624),
    "EleutherAI/pythia-160m": ({"hidden_size": 768, "num_hidden_layers": 12, "num_attention_heads": 12,
                                "vocab_size": 50304}, 162_322_944),
    "EleutherAI/pythia-410m": ({"hidden_size": 1024, "num_hidden_layers": 24, "num_attention_heads": 16,
                                "vocab_size": 50304}, 405_334_016),
    "EleutherAI/pythia-1.4b": ({"hidden_size": 2048, "num_hidden_layers": 24, "num_attention_heads": 16,
                                "vocab_size": 50304}, 1_414_647_808),
    "EleutherAI/pythia-6.9b": ({"hidden_size": 4096, "num_hidden_layers": 32, "num_attention_heads": 32,
                                "vocab_size": 50432}, 6_857_302_016),
}


@pytest.mark.parametrize("name", list(PRESETS))
def test_presets_match_the_published_configs_and_parameter_counts(name):
    values, count = PUBLISHED[name]  # every preset is checked against its checkpoint's published config
    written = config_to_hf(preset(name))
    for key, value in values.items():
        assert written.get(key) == value, (name, key, written.get(key), value)
    if count is None:
        return
    shapes = jax.eval_shape(Model(preset(name)).init, jax.random.key(0))
    ours = sum(int(np.prod(x.shape)) for x in jax.tree.leaves(shapes))
    if isinstance(count, int):
        assert ours == count
    else:  # the card's figure, 0.49B or 7.61B (some cards truncate): within 1%
        assert ours == pytest.approx(count, rel=0.01)


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

    from jaxprompt.models.layers.attention import Adapter

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
