"""What an architecture module declares: everything jaxprompt knows about one model family.

Each module under `jaxprompt/models/` (gpt2, opt, llama, mistral, qwen2, qwen3, gemma, gemma2,
gpt_neox) builds one `Architecture`; `registry.py` maps `model_type` to it. The shared layers
live in `layers.py`.
"""

from __future__ import annotations

import dataclasses
from typing import Any, Callable, Mapping

from jaxtyping import Array, Bool, Float, Int

from jaxprompt.models.config import ModelConfig
from jaxprompt.models.layers import Adapter, KVCache, Prefix

# (HF state-dict key, params path, transpose). `{i}` in a key is the layer index; its params leaf is
# stacked over layers. nn.Linear weights are (out, in) and are transposed; GPT-2's Conv1D is not.
KeyRow = tuple[str, tuple[str, ...], bool]

TransformerFn = Callable[
    [dict, Float[Array, "B T E"], Int[Array, "B T"], Bool[Array, "B T"], ModelConfig, "KVCache | None",
     "Prefix | None", bool, "Adapter | None"],
    tuple[Float[Array, "B T E"], "KVCache | None"],
]


@dataclasses.dataclass(frozen=True)
class TokenizerConventions:
    """How the family's tokenizer frames a text, when the checkpoint's tokenizer files do not say."""

    add_bos: bool  # transformers' tokenizer for this family starts every text with BOS
    bos_token: str | None = None
    eos_token: str | None = None


@dataclasses.dataclass(frozen=True)
class Architecture:
    model_type: str
    config_from_hf: Callable[[Mapping[str, Any]], ModelConfig]
    config_to_hf: Callable[[ModelConfig], dict[str, Any]]
    presets: Mapping[str, Mapping[str, Any]]  # HF id -> its published config.json values
    param_shapes: Callable[[ModelConfig], dict]  # the params pytree with shape tuples as leaves
    key_table: Callable[[ModelConfig], list[KeyRow]]  # one table: loads and exports
    embed: Callable[[dict, Int[Array, "B T"], ModelConfig], Float[Array, "B T E"]]
    embedding_table: Callable[[dict, ModelConfig], Float[Array, "V E"]]  # the space prompts live in
    output_embedding: Callable[[dict, ModelConfig], Float[Array, "V E"]]
    transformer: TransformerFn
    tokenizer: TokenizerConventions
    hf_architecture: str  # transformers class named in config.json "architectures"
    stack_key: str = "layers"  # the params entry holding the layer-stacked block weights
    residual_projections: tuple[tuple[str, ...], ...] = ()  # get GPT-2's 1/sqrt(2L) init scale
    unit_offset_norms: bool = False  # norm weights w act as (1 + w) (Gemma): initialised to zero
    optional_prefixes: tuple[str, ...] = ()  # key prefixes a base-model checkpoint may drop
    ignored_suffixes: tuple[str, ...] = ()  # buffers some checkpoints carry (masks, rotary tables)
    key_aliases: Mapping[str, str] = dataclasses.field(default_factory=dict)  # other spelling -> table key
