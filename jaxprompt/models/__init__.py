"""Frozen causal LMs: `embed(tokens)` then `transformer(embeds, positions, mask)` then `unembed`.

    model.py         `Model`: embed / transformer / unembed / logits over a params pytree
    model_config.py  `ModelConfig`, the architecture-neutral settings the layers read
    architecture.py  what an architecture module declares
    gpt2.py opt.py llama.py mistral.py qwen2.py qwen3.py gemma.py gemma2.py gpt_neox.py
                     one module per family: config map, presets, shapes, HF key table, block
    registry.py      `model_type` -> architecture; presets of published checkpoints
    layers/          norms, rotary, attention, the decoder stack, bf16 held as bits
    convert.py       params <-> Hugging Face state dicts through each family's one key table
    loading.py       Hugging Face checkpoints (safetensors, sharded or not, or .bin) -> params
    file_hashes.py   content hashes of a checkpoint's files (the prompt cache's key)
    host_memory.py   the compiler's freed memory returned to the OS after each compile

May import: jaxprompt.precision, jaxprompt.files, jaxprompt.settings.
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
