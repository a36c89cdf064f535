"""The architecture-neutral model configuration, and helpers the architecture modules use to read
and write Hugging Face `config.json`.

`ModelConfig` holds what the shared layers need to know; each architecture module
(`gpt2.py`, `llama.py`, ...) maps its own `config.json` fields onto it with one table used both ways.
Axis glossary: see docs/architecture.md (B batch, T time, D model width, E token-embedding width, F
feed-forward width, H heads, G key/value heads, K head width, V vocabulary, L layers).
"""

from __future__ import annotations

import dataclasses
import json
import os
from typing import Any, Mapping


class ConfigError(ValueError):
    """A model configuration jaxprompt cannot represent."""


@dataclasses.dataclass(frozen=True)
class ModelConfig:
    model_type: str
    vocab_size: int
    max_positions: int  # the position table (learned positions) or the trained context (rotary)
    d_model: int
    n_layers: int
    n_heads: int
    d_ff: int
    d_embed: int | None = None  # token-embedding width (OPT's word_embed_proj_dim); default d_model
    n_kv_heads: int | None = None  # key/value heads (grouped-query attention); default n_heads
    head_dim: int | None = None  # default d_model // n_heads (Gemma and Qwen3 set it independently)
    activation: str = "gelu_new"
    norm_eps: float = 1e-5
    # GPT-2 / OPT
    pre_layer_norm: bool = True
    final_layer_norm: bool = True
    layer_norm_affine: bool = True
    use_bias: bool = True
    # rotary families
    attention_bias: bool = False
    mlp_bias: bool = False
    rope_theta: float = 10000.0
    rope_scaling: tuple[tuple[str, Any], ...] | None = None  # rope_scaling dict as sorted items (hashable)
    rotary_pct: float = 1.0  # fraction of each head that is rotated (GPT-NeoX: 0.25)
    parallel_residual: bool = False  # GPT-NeoX: attention and MLP read the same input
    sliding_window: int | None = None
    windowed_layers: tuple[bool, ...] | None = None  # which layers use the window (None: all)
    query_pre_attn_scalar: float | None = None  # Gemma 2: attention scale is its -1/2 power
    attn_softcap: float | None = None
    final_softcap: float | None = None
    tie_word_embeddings: bool = True
    bos_token_id: int | None = None
    eos_token_id: int | None = None
    pad_token_id: int | None = None
    stop_token_ids: tuple[int, ...] = ()  # every EOS id when config.json lists several (instruct models)

    def __post_init__(self):
        fill = lambda name, value: object.__setattr__(self, name, value) if getattr(self, name) is None else None
        fill("d_embed", self.d_model)
        fill("n_kv_heads", self.n_heads)
        if self.head_dim is None:
            if self.d_model % self.n_heads:
                raise ConfigError(f"d_model {self.d_model} is not divisible by n_heads {self.n_heads}")
            fill("head_dim", self.d_model // self.n_heads)
        if self.n_heads % self.n_kv_heads:
            raise ConfigError(f"n_heads {self.n_heads} is not a multiple of n_kv_heads {self.n_kv_heads}")
        if self.windowed_layers is not None and len(self.windowed_layers) != self.n_layers:
            raise ConfigError(f"windowed_layers has {len(self.windowed_layers)} entries for {self.n_layers} layers")
        if self.sliding_window is not None and self.sliding_window < 1:
            raise ConfigError(f"sliding_window must be at least 1, got {self.sliding_window}")

    @property
    def has_projection(self) -> bool:
        return self.d_embed != self.d_model

    @property
    def rotary_dim(self) -> int:
        return int(self.head_dim * self.rotary_pct)

    @property
    def rope_scaling_dict(self) -> dict | None:
        return None if self.rope_scaling is None else dict(self.rope_scaling)

    def replace(self, **changes) -> "ModelConfig":
        return dataclasses.replace(self, **changes)


# ---- config.json helpers ---------------------------------------------------------------------

def as_dict(hf: Mapping[str, Any] | str | os.PathLike | Any) -> dict[str, Any]:
    """A HF config as a dict: from a dict, a `config.json` path or directory, or a transformers config."""
    if isinstance(hf, Mapping):
        return dict(hf)
    if isinstance(hf, (str, os.PathLike)):
        path = os.fspath(hf)
        if os.path.isdir(path):
            path = os.path.join(path, "config.json")
        if not os.path.isfile(path):
            raise ConfigError(f"no config.json at {path}")
        try:
            with open(path) as f:
                return json.load(f)
        except (json.JSONDecodeError, UnicodeDecodeError) as e:
            raise ConfigError(f"{path} is not valid JSON: {e}") from e
    if hasattr(hf, "to_dict"):
        return hf.to_dict()
    raise ConfigError(f"cannot read a model config from {type(hf).__name__}")


def read_fields(hf: Mapping[str, Any], fields: Mapping[str, str], defaults: Mapping[str, Any]) -> dict[str, Any]:
    """`ours -> value` for a field table `ours -> HF name`, with transformers' defaults for omitted
    keys. A list of EOS ids (instruct models) becomes `eos_token_id` = the first and `stop_token_ids`."""
    out = {}
    for ours, theirs in fields.items():
        value = hf.get(theirs)
        if value is None:
            value = defaults.get(theirs)
        if isinstance(value, list) and ours.endswith("token_id"):
            if ours == "eos_token_id" and len(value) > 1:
                out["stop_token_ids"] = tuple(value)
            value = value[0] if value else None
        out[ours] = value
    return out


def write_fields(config: ModelConfig, fields: Mapping[str, str]) -> dict[str, Any]:
    out = {theirs: getattr(config, ours) for ours, theirs in fields.items()}
    if config.stop_token_ids and "eos_token_id" in fields:
        out[fields["eos_token_id"]] = list(config.stop_token_ids)
    return out


ROPE_SCALINGS = ("default", "linear", "llama3")  # what layers.rotary_inv_freq computes


def rope_from_hf(hf: Mapping[str, Any], default_theta: float) -> tuple[float, tuple[tuple[str, Any], ...] | None]:
    """(rope_theta, rope_scaling items) from either config.json spelling: the published
    `rope_theta` + `rope_scaling`, or transformers 5's `rope_parameters`."""
    params = dict(hf.get("rope_parameters") or {})
    scaling = dict(hf.get("rope_scaling") or params)
    theta = hf.get("rope_theta", params.get("rope_theta", scaling.get("rope_theta", default_theta)))
    scaling = {k: v for k, v in scaling.items() if k not in ("rope_theta", "partial_rotary_factor")}
    kind = scaling.get("rope_type", scaling.get("type", "default"))
    if kind == "default":
        return float(theta), None
    if kind not in ROPE_SCALINGS:
        raise ConfigError(f"rope_scaling type {kind!r} is not supported (only {', '.join(ROPE_SCALINGS)})")
    scaling["rope_type"] = kind
    scaling.pop("type", None)
    return float(theta), tuple(sorted(scaling.items()))


def rope_to_hf(config: ModelConfig) -> dict[str, Any]:
    """The published spelling, which transformers 4 and 5 both read."""
    return {"rope_theta": config.rope_theta, "rope_scaling": config.rope_scaling_dict}


def refuse(hf: Mapping[str, Any], model_type: str, unsupported: Mapping[str, Any]) -> None:
    """Raises if `hf` sets an option jaxprompt does not implement (`name -> the only accepted value`)."""
    for name, accepted in unsupported.items():
        value = hf.get(name, accepted)
        if value != accepted and value is not None:
            raise ConfigError(f"{model_type} option {name}={value!r} is not supported (only {accepted!r})")
