"""Qwen3 (Yang et al. 2025): Llama's decoder with an RMSNorm over each head's queries and keys
before the rotary (no q/k/v biases unless `attention_bias`), a head width independent of the model
width, Qwen2's optional sliding window, and no BOS.
"""

from __future__ import annotations

from typing import Any, Mapping

from jaxprompt.models import llama, qwen2
from jaxprompt.models.architecture import TokenizerConventions
from jaxprompt.models.model_config import ModelConfig

HF_FIELDS = {k: v for k, v in llama.HF_FIELDS.items() if k != "mlp_bias"}
HF_DEFAULTS = {**qwen2.HF_DEFAULTS, "head_dim": 128}
QWEN3 = llama.Variant(qk_norm=True)

PRESETS: dict[str, dict[str, Any]] = {
    "Qwen/Qwen3-0.6B": {
        "model_type": "qwen3", "hidden_size": 1024, "intermediate_size": 3072, "num_hidden_layers": 28,
        "num_attention_heads": 16, "num_key_value_heads": 8, "head_dim": 128, "max_position_embeddings": 40960,
        "max_window_layers": 28, "rms_norm_eps": 1e-6, "rope_theta": 1000000, "sliding_window": None,
        "use_sliding_window": False, "attention_bias": False, "vocab_size": 151936, "bos_token_id": 151643,
        "eos_token_id": 151645, "tie_word_embeddings": True},
}


def config_from_hf(hf: Mapping[str, Any]) -> ModelConfig:
    n_layers = hf.get("num_hidden_layers", HF_DEFAULTS["num_hidden_layers"])
    return llama.read_config(hf, "qwen3", HF_FIELDS, HF_DEFAULTS, **qwen2.window_settings(hf, n_layers))


def config_to_hf(c: ModelConfig) -> dict[str, Any]:
    return {**llama.write_config(c, HF_FIELDS, "Qwen3ForCausalLM"), **qwen2.window_to_hf(c)}


ARCHITECTURE = llama.make_architecture(
    "qwen3", QWEN3, config_from_hf=config_from_hf, config_to_hf=config_to_hf, presets=PRESETS,
    tokenizer=TokenizerConventions(add_bos=False, eos_token="<|im_end|>"), hf_architecture="Qwen3ForCausalLM",
)
