"""`model_type` -> its architecture module, and the lookups built on that map."""

from __future__ import annotations

from typing import Any, Mapping

from jaxprompt.models import gemma, gemma2, gpt2, gpt_neox, llama, mistral, opt, qwen2, qwen3
from jaxprompt.models.architecture import Architecture
from jaxprompt.models.model_config import ConfigError, ModelConfig, as_dict

ARCHITECTURES: dict[str, Architecture] = {
    module.ARCHITECTURE.model_type: module.ARCHITECTURE
    for module in (gpt2, opt, llama, mistral, qwen2, qwen3, gemma, gemma2, gpt_neox)
}

# published checkpoints by HF id, as their config.json dicts
PRESETS: dict[str, Mapping[str, Any]] = {name: hf for arch in ARCHITECTURES.values() for name, hf in arch.presets.items()}


def architecture(model_type: str) -> Architecture:
    if model_type not in ARCHITECTURES:
        raise ConfigError(f"unknown model_type {model_type!r}: jaxprompt supports {', '.join(ARCHITECTURES)}")
    return ARCHITECTURES[model_type]


def adaption_families() -> list[str]:
    """The model types whose architecture declares adaption-prompt (LLaMA-Adapter) support."""
    return [name for name, arch in ARCHITECTURES.items() if arch.adaption_prompts]


def require_adaption_prompts(model_type: str) -> None:
    """Refuses adaption prompts on an architecture that does not declare them, in one line."""
    if not architecture(model_type).adaption_prompts:
        raise ConfigError(f"adaption prompts (--method adaption) are not supported by {model_type} models; "
                          f"families that support them: {', '.join(adaption_families())}")


def config_from_hf(hf) -> ModelConfig:
    """A ModelConfig from a HF config: a dict, a `config.json` path or directory, or a transformers config."""
    hf = as_dict(hf)
    return architecture(hf.get("model_type")).config_from_hf(hf)


def config_to_hf(config: ModelConfig) -> dict[str, Any]:
    """The HF `config.json` dict of a ModelConfig (the inverse of `config_from_hf`)."""
    return architecture(config.model_type).config_to_hf(config)


def preset(name: str) -> ModelConfig:
    """The ModelConfig of a published checkpoint, by its HF id (no download)."""
    if name not in PRESETS:
        raise ConfigError(f"no preset {name!r}; known: {', '.join(PRESETS)}")
    return config_from_hf(PRESETS[name])
