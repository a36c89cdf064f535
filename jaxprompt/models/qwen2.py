"""Qwen2 / Qwen2.5 (Yang et al. 2024): Llama's decoder with biases on the q/k/v projections (none on
the output projection), an optional sliding window on the layers from `max_window_layers` up, and a
tokenizer that adds no BOS.
"""

from __future__ import annotations

from typing import Any, Mapping

from jaxprompt.models import llama
from jaxprompt.models.architecture import TokenizerConventions
from jaxprompt.models.model_config import ModelConfig

HF_FIELDS = {k: v for k, v in llama.HF_FIELDS.items() if k not in ("attention_bias", "mlp_bias")}
HF_DEFAULTS = {**llama.HF_DEFAULTS, "vocab_size": 151936, "intermediate_size": 22016,
               "max_position_embeddings": 32768, "bos_token_id": None, "eos_token_id": None}
QWEN2 = llama.Variant(qkv_bias=True, out_bias=False)

PRESETS: dict[str, dict[str, Any]] = {
    "Qwen/Qwen2.5-0.5B": {
        "model_type": "qwen2", "hidden_size": 896, "intermediate_size": 4864, "num_hidden_layers": 24,
        "num_attention_heads": 14, "num_key_value_heads": 2, "max_position_embeddings": 32768,
        "max_window_layers": 24, "rms_norm_eps": 1e-6, "rope_theta": 1000000.0, "sliding_window": 32768,
        "use_sliding_window": False, "vocab_size": 151936, "bos_token_id": 151643, "eos_token_id": 151643,
        "tie_word_embeddings": True},
    "Qwen/Qwen2.5-7B": {
        "model_type": "qwen2", "hidden_size": 3584, "intermediate_size": 18944, "num_hidden_layers": 28,
        "num_attention_heads": 28, "num_key_value_heads": 4, "max_position_embeddings": 131072,
        "max_window_layers": 28, "rms_norm_eps": 1e-6, "rope_theta": 1000000.0, "sliding_window": 131072,
        "use_sliding_window": False, "vocab_size": 152064, "bos_token_id": 151643, "eos_token_id": 151643,
        "tie_word_embeddings": False},
}


def window_settings(hf: Mapping[str, Any], n_layers: int) -> dict[str, Any]:
    """`sliding_window` and which layers use it, as Qwen2's config derives `layer_types`."""
    if not hf.get("use_sliding_window", False) or hf.get("sliding_window", 4096) is None:
        return {"sliding_window": None, "windowed_layers": None}
    types = hf.get("layer_types") or ["sliding_attention" if i >= hf.get("max_window_layers", 28) else "full_attention"
                                      for i in range(n_layers)]
    return {"sliding_window": hf.get("sliding_window", 4096),
            "windowed_layers": tuple(t == "sliding_attention" for t in types)}


def window_to_hf(c: ModelConfig) -> dict[str, Any]:
    if c.sliding_window is None:
        return {"use_sliding_window": False}
    return {"use_sliding_window": True, "sliding_window": c.sliding_window,
            "layer_types": ["sliding_attention" if w else "full_attention"
                            for w in (c.windowed_layers or (True,) * c.n_layers)]}


def config_from_hf(hf: Mapping[str, Any]) -> ModelConfig:
    n_layers = hf.get("num_hidden_layers", HF_DEFAULTS["num_hidden_layers"])
    return llama.read_config(hf, "qwen2", HF_FIELDS, HF_DEFAULTS, **window_settings(hf, n_layers))


def config_to_hf(c: ModelConfig) -> dict[str, Any]:
    return {**llama.write_config(c, HF_FIELDS, "Qwen2ForCausalLM"), **window_to_hf(c)}


ARCHITECTURE = llama.make_architecture(
    "qwen2", QWEN2, config_from_hf=config_from_hf, config_to_hf=config_to_hf, presets=PRESETS,
    tokenizer=TokenizerConventions(add_bos=False, eos_token="<|endoftext|>"), hf_architecture="Qwen2ForCausalLM",
)
