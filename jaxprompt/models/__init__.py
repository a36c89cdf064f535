"""Frozen causal LMs: `embed(tokens)` then `transformer(embeds, positions, mask)` then `unembed`.

Public API:
    load_pretrained(name_or_path, dtype=...) -> (config, params)
    Model(config).logits(params, tokens, mask) / embed / transformer / unembed / forward
    preset(hf_id) -> ModelConfig of a published checkpoint (no download)

One module per architecture (gpt2, opt, llama, mistral, qwen2, qwen3, gemma, gemma2, gpt_neox);
`registry.py` maps `model_type` to it, `layers.py` holds the shared pieces.
"""

from jaxprompt.models.convert import CheckpointError, save_pretrained
from jaxprompt.models.layers.attention import KVCache, Prefix
from jaxprompt.models.loading import load_pretrained
from jaxprompt.models.model import Model, PositionError, positions_from_mask
from jaxprompt.models.model_config import ConfigError, ModelConfig
from jaxprompt.models.registry import ARCHITECTURES, PRESETS, config_from_hf, config_to_hf, preset

__all__ = ["Model", "ModelConfig", "ConfigError", "PositionError", "CheckpointError", "KVCache", "Prefix", "positions_from_mask",
           "load_pretrained", "save_pretrained", "preset", "PRESETS", "ARCHITECTURES", "config_from_hf",
           "config_to_hf"]
