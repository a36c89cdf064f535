"""Mistral 7B (Jiang et al. 2023): Llama's decoder with a sliding attention window.

Every layer attends at most `sliding_window` positions back (v0.1: 4096; v0.3 has none). The
window is applied, so results equal transformers' at any length (not only below the window).
"""

from __future__ import annotations

from typing import Any, Mapping

from jaxprompt.models import llama
from jaxprompt.models.architecture import TokenizerConventions
from jaxprompt.models.model_config import ModelConfig

HF_FIELDS = {k: v for k, v in llama.HF_FIELDS.items() if k not in ("attention_bias", "mlp_bias")} \
    | {"sliding_window": "sliding_window"}
HF_DEFAULTS = {**llama.HF_DEFAULTS, "intermediate_size": 14336, "num_key_value_heads": 8,
               "max_position_embeddings": 4096 * 32}

PRESETS: dict[str, dict[str, Any]] = {
    "mistralai/Mistral-7B-v0.1": {
        "model_type": "mistral", "hidden_size": 4096, "intermediate_size": 14336, "num_hidden_layers": 32,
        "num_attention_heads": 32, "num_key_value_heads": 8, "max_position_embeddings": 32768, "rms_norm_eps": 1e-5,
        "rope_theta": 10000.0, "sliding_window": 4096, "vocab_size": 32000, "bos_token_id": 1, "eos_token_id": 2,
        "tie_word_embeddings": False},
    "mistralai/Mistral-7B-v0.3": {
        "model_type": "mistral", "hidden_size": 4096, "intermediate_size": 14336, "num_hidden_layers": 32,
        "num_attention_heads": 32, "num_key_value_heads": 8, "max_position_embeddings": 32768, "rms_norm_eps": 1e-5,
        "rope_theta": 1000000.0, "sliding_window": None, "vocab_size": 32768, "bos_token_id": 1, "eos_token_id": 2,
        "tie_word_embeddings": False},
}


def config_from_hf(hf: Mapping[str, Any]) -> ModelConfig:
    # sliding_window defaults to 4096 only when the key is absent; an explicit null means none
    window = hf.get("sliding_window", 4096)
    return llama.read_config(hf, "mistral", {k: v for k, v in HF_FIELDS.items() if k != "sliding_window"},
                             HF_DEFAULTS, sliding_window=window)


def config_to_hf(c: ModelConfig) -> dict[str, Any]:
    return llama.write_config(c, HF_FIELDS, "MistralForCausalLM")


ARCHITECTURE = llama.make_architecture(
    "mistral", llama.LLAMA, config_from_hf=config_from_hf, config_to_hf=config_to_hf, presets=PRESETS,
    tokenizer=TokenizerConventions(add_bos=True), hf_architecture="MistralForCausalLM",
)
