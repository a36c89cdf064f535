"""Gemma (Gemma Team 2024): Llama's decoder with GeGLU, RMSNorm weights acting as (1 + w),
token embeddings scaled by sqrt(d_model), a head width independent of the model width (256), and
a tied output head.
"""

from __future__ import annotations

from typing import Any, Mapping

from jaxprompt.models import llama
from jaxprompt.models.architecture import TokenizerConventions
from jaxprompt.models.model_config import ModelConfig

HF_FIELDS = {k: v for k, v in llama.HF_FIELDS.items() if k != "mlp_bias"}
HF_DEFAULTS = {**llama.HF_DEFAULTS, "vocab_size": 256000, "hidden_size": 3072, "intermediate_size": 24576,
               "num_hidden_layers": 28, "num_attention_heads": 16, "num_key_value_heads": 16, "head_dim": 256,
               "hidden_act": "gelu_pytorch_tanh", "max_position_embeddings": 8192, "tie_word_embeddings": True,
               "pad_token_id": 0, "eos_token_id": 1, "bos_token_id": 2}
GEMMA = llama.Variant(gemma_norms=True, scaled_embeddings=True)

PRESETS: dict[str, dict[str, Any]] = {
    "google/gemma-2b": {
        "model_type": "gemma", "hidden_size": 2048, "intermediate_size": 16384, "num_hidden_layers": 18,
        "num_attention_heads": 8, "num_key_value_heads": 1, "head_dim": 256, "hidden_act": "gelu",
        "max_position_embeddings": 8192, "rms_norm_eps": 1e-6, "rope_theta": 10000.0, "vocab_size": 256000,
        "bos_token_id": 2, "eos_token_id": 1, "pad_token_id": 0},
    "google/gemma-7b": {
        "model_type": "gemma", "hidden_size": 3072, "intermediate_size": 24576, "num_hidden_layers": 28,
        "num_attention_heads": 16, "num_key_value_heads": 16, "head_dim": 256, "hidden_act": "gelu",
        "max_position_embeddings": 8192, "rms_norm_eps": 1e-6, "rope_theta": 10000.0, "vocab_size": 256000,
        "bos_token_id": 2, "eos_token_id": 1, "pad_token_id": 0},
}


def config_from_hf(hf: Mapping[str, Any]) -> ModelConfig:
    config = llama.read_config(hf, "gemma", HF_FIELDS, HF_DEFAULTS)
    # the released configs say "gelu" but mean the tanh approximation (transformers substitutes it too)
    return config.replace(activation="gelu_pytorch_tanh") if config.activation == "gelu" else config


def config_to_hf(c: ModelConfig) -> dict[str, Any]:
    return llama.write_config(c, HF_FIELDS, "GemmaForCausalLM")


ARCHITECTURE = llama.make_architecture(
    "gemma", GEMMA, config_from_hf=config_from_hf, config_to_hf=config_to_hf, presets=PRESETS,
    tokenizer=TokenizerConventions(add_bos=True, bos_token="<bos>", eos_token="<eos>"),
    hf_architecture="GemmaForCausalLM",
)
