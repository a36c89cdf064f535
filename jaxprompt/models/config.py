"""Model configuration, read from and written to Hugging Face `config.json`.

Axis glossary used across jaxprompt (shape annotations follow it):
  B batch, T time (tokens of the current call), S key/value slots (cache + current),
  P prompt length (virtual tokens), D model width, E token-embedding width
  (= D except OPT with `word_embed_proj_dim`), F feed-forward width, H heads,
  K head width (D / H), V vocabulary, L layers.
"""

from __future__ import annotations

import dataclasses
import json
import os
from typing import Any, Mapping

SUPPORTED_MODEL_TYPES = ("gpt2", "opt")


class ConfigError(ValueError):
    """A model configuration jaxprompt cannot represent."""


@dataclasses.dataclass(frozen=True)
class ModelConfig:
    model_type: str
    vocab_size: int
    max_positions: int
    d_model: int
    n_layers: int
    n_heads: int
    d_ff: int
    d_embed: int  # token-embedding width; OPT's word_embed_proj_dim
    activation: str = "gelu_new"
    layer_norm_eps: float = 1e-5
    pre_layer_norm: bool = True
    final_layer_norm: bool = True
    layer_norm_affine: bool = True
    use_bias: bool = True
    tie_word_embeddings: bool = True
    bos_token_id: int | None = None
    eos_token_id: int | None = None
    pad_token_id: int | None = None

    def __post_init__(self):
        if self.model_type not in SUPPORTED_MODEL_TYPES:
            raise ConfigError(
                f"unknown model_type {self.model_type!r}: jaxprompt supports {', '.join(SUPPORTED_MODEL_TYPES)}"
            )
        if self.d_model % self.n_heads:
            raise ConfigError(f"d_model {self.d_model} is not divisible by n_heads {self.n_heads}")
        if self.model_type == "gpt2" and self.d_embed != self.d_model:
            raise ConfigError("GPT-2 has no embedding projection: d_embed must equal d_model")

    @property
    def head_dim(self) -> int:
        return self.d_model // self.n_heads

    @property
    def position_offset(self) -> int:
        # OPT's learned position table reserves its first two rows (a fairseq legacy).
        return 2 if self.model_type == "opt" else 0

    @property
    def has_projection(self) -> bool:
        return self.d_embed != self.d_model

    # ---- Hugging Face config.json, both directions -------------------------------------------

    @classmethod
    def from_hf_config(cls, hf: Mapping[str, Any] | str | os.PathLike | Any) -> "ModelConfig":
        """Reads a HF config: a dict, a `config.json` path or directory, or a transformers config."""
        hf = _as_dict(hf)
        model_type = hf.get("model_type")
        if model_type not in _HF_FIELDS:
            raise ConfigError(
                f"unknown model_type {model_type!r} in config.json: jaxprompt supports "
                f"{', '.join(SUPPORTED_MODEL_TYPES)}"
            )
        if model_type == "gpt2":
            for flag in ("scale_attn_by_inverse_layer_idx", "reorder_and_upcast_attn", "add_cross_attention"):
                if hf.get(flag):
                    raise ConfigError(f"GPT-2 option {flag}=True is not supported")
            if hf.get("scale_attn_weights") is False:
                raise ConfigError("GPT-2 option scale_attn_weights=False is not supported")
        defaults = _HF_DEFAULTS[model_type]
        fields = {}
        for ours, theirs in _HF_FIELDS[model_type].items():
            value = hf.get(theirs, defaults.get(theirs))
            if isinstance(value, list):  # eos_token_id may be a list; the first is the stop token
                value = value[0] if value else None
            fields[ours] = value
        if fields["d_ff"] is None:  # GPT-2 n_inner=None means 4 * n_embd
            fields["d_ff"] = 4 * fields["d_model"]
        if fields["d_embed"] is None:
            fields["d_embed"] = fields["d_model"]
        if model_type == "gpt2":
            fields["pre_layer_norm"] = True
            fields["final_layer_norm"] = True
        else:
            fields["final_layer_norm"] = bool(fields["pre_layer_norm"]) and not hf.get("_remove_final_layer_norm", False)
        return cls(model_type=model_type, **fields)

    def to_hf_config(self) -> dict[str, Any]:
        """The HF `config.json` dict for this model (inverse of `from_hf_config`)."""
        out: dict[str, Any] = {"model_type": self.model_type}
        for ours, theirs in _HF_FIELDS[self.model_type].items():
            out[theirs] = getattr(self, ours)
        if self.model_type == "gpt2":
            out["architectures"] = ["GPT2LMHeadModel"]
        else:
            out["architectures"] = ["OPTForCausalLM"]
            out["_remove_final_layer_norm"] = self.pre_layer_norm and not self.final_layer_norm
        return out


# ours -> HF name, per architecture. The single table used for reading and writing config.json.
_HF_FIELDS = {
    "gpt2": {
        "vocab_size": "vocab_size",
        "max_positions": "n_positions",
        "d_model": "n_embd",
        "n_layers": "n_layer",
        "n_heads": "n_head",
        "d_ff": "n_inner",
        "d_embed": "n_embd",
        "activation": "activation_function",
        "layer_norm_eps": "layer_norm_epsilon",
        "tie_word_embeddings": "tie_word_embeddings",
        "bos_token_id": "bos_token_id",
        "eos_token_id": "eos_token_id",
        "pad_token_id": "pad_token_id",
    },
    "opt": {
        "vocab_size": "vocab_size",
        "max_positions": "max_position_embeddings",
        "d_model": "hidden_size",
        "n_layers": "num_hidden_layers",
        "n_heads": "num_attention_heads",
        "d_ff": "ffn_dim",
        "d_embed": "word_embed_proj_dim",
        "activation": "activation_function",
        "pre_layer_norm": "do_layer_norm_before",
        "layer_norm_affine": "layer_norm_elementwise_affine",
        "use_bias": "enable_bias",
        "tie_word_embeddings": "tie_word_embeddings",
        "bos_token_id": "bos_token_id",
        "eos_token_id": "eos_token_id",
        "pad_token_id": "pad_token_id",
    },
}

# transformers' defaults for keys a config.json may omit.
_HF_DEFAULTS = {
    "gpt2": {
        "vocab_size": 50257, "n_positions": 1024, "n_embd": 768, "n_layer": 12, "n_head": 12,
        "activation_function": "gelu_new", "layer_norm_epsilon": 1e-5, "tie_word_embeddings": True,
        "bos_token_id": 50256, "eos_token_id": 50256,
    },
    "opt": {
        "vocab_size": 50272, "max_position_embeddings": 2048, "hidden_size": 768, "num_hidden_layers": 12,
        "num_attention_heads": 12, "ffn_dim": 3072, "activation_function": "relu",
        "do_layer_norm_before": True, "layer_norm_elementwise_affine": True, "enable_bias": True,
        "tie_word_embeddings": True, "pad_token_id": 1, "bos_token_id": 2, "eos_token_id": 2,
    },
}


def _as_dict(hf) -> dict[str, Any]:
    if isinstance(hf, Mapping):
        return dict(hf)
    if isinstance(hf, (str, os.PathLike)):
        path = os.fspath(hf)
        if os.path.isdir(path):
            path = os.path.join(path, "config.json")
        if not os.path.isfile(path):
            raise ConfigError(f"no config.json at {path}")
        with open(path) as f:
            return json.load(f)
    if hasattr(hf, "to_dict"):
        return hf.to_dict()
    raise ConfigError(f"cannot read a model config from {type(hf).__name__}")


# Published architectures, as HF config dicts (what their config.json says).
PRESETS: dict[str, dict[str, Any]] = {
    "gpt2": {"model_type": "gpt2", "n_embd": 768, "n_layer": 12, "n_head": 12},
    "distilgpt2": {"model_type": "gpt2", "n_embd": 768, "n_layer": 6, "n_head": 12},
    "gpt2-medium": {"model_type": "gpt2", "n_embd": 1024, "n_layer": 24, "n_head": 16},
    "gpt2-large": {"model_type": "gpt2", "n_embd": 1280, "n_layer": 36, "n_head": 20},
    "gpt2-xl": {"model_type": "gpt2", "n_embd": 1600, "n_layer": 48, "n_head": 25},
    "facebook/opt-125m": {"model_type": "opt", "hidden_size": 768, "num_hidden_layers": 12,
                          "num_attention_heads": 12, "ffn_dim": 3072},
    "facebook/opt-350m": {"model_type": "opt", "hidden_size": 1024, "num_hidden_layers": 24,
                          "num_attention_heads": 16, "ffn_dim": 4096, "word_embed_proj_dim": 512,
                          "do_layer_norm_before": False},
    "facebook/opt-1.3b": {"model_type": "opt", "hidden_size": 2048, "num_hidden_layers": 24,
                          "num_attention_heads": 32, "ffn_dim": 8192},
    "facebook/opt-2.7b": {"model_type": "opt", "hidden_size": 2560, "num_hidden_layers": 32,
                          "num_attention_heads": 32, "ffn_dim": 10240},
    "facebook/opt-6.7b": {"model_type": "opt", "hidden_size": 4096, "num_hidden_layers": 32,
                          "num_attention_heads": 32, "ffn_dim": 16384},
}


def preset(name: str) -> ModelConfig:
    """The `ModelConfig` of a published checkpoint, by its HF id (no download)."""
    if name not in PRESETS:
        raise ConfigError(f"no preset {name!r}; known: {', '.join(PRESETS)}")
    return ModelConfig.from_hf_config(PRESETS[name])
