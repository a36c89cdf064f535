"""What an architecture module declares: everything jaxprompt knows about one model family.

Each module under `jaxprompt/models/` (gpt2, opt, llama, mistral, qwen2, qwen3, gemma, gemma2,
gpt_neox) builds one `Architecture`; `registry.py` maps `model_type` to it. The shared layers
live in `layers/`.
"""

from __future__ import annotations

import dataclasses
from typing import Any, Callable, Mapping

from jaxtyping import Array, Float, Int

from jaxprompt.models.layers.attention import KVCache
from jaxprompt.models.layers.bits import from_bits
from jaxprompt.models.layers.stack import StackInputs
from jaxprompt.models.model_config import ModelConfig

# (HF state-dict key, params path, transpose). `{i}` in a key is the layer index; its params leaf is
# stacked over layers. nn.Linear weights are (out, in) and are transposed; GPT-2's Conv1D is not.
# A key table's first row is the token-embedding table; an untied output head is the row the
# untied table has and the tied one lacks (`Architecture.head_row`).
KeyRow = tuple[str, tuple[str, ...], bool]

# (params, inputs, config, remat) -> final hidden states, and the updated cache if one was given
TransformerFn = Callable[[dict, StackInputs, ModelConfig, bool], tuple[Float[Array, "B T E"], "KVCache | None"]]


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
    transformer: TransformerFn
    tokenizer: TokenizerConventions
    hf_architecture: str  # transformers class named in config.json "architectures"
    # the embed trio; None: read from the key table (`token_table`, `output_table`), which is all a
    # family needs unless it transforms its embeddings (Gemma scales them)
    embed: Callable[[dict, Int[Array, "B T"], ModelConfig], Float[Array, "B T E"]] | None = None
    embedding_table: Callable[[dict, ModelConfig], Float[Array, "V E"]] | None = None  # the space prompts live in
    output_embedding: Callable[[dict, ModelConfig], Float[Array, "V E"]] | None = None
    stack_key: str = "layers"  # the params entry holding the layer-stacked block weights
    residual_projections: tuple[tuple[str, ...], ...] = ()  # get GPT-2's 1/sqrt(2L) init scale
    unit_offset_norms: bool = False  # norm weights w act as (1 + w) (Gemma): initialised to zero
    optional_prefixes: tuple[str, ...] = ()  # key prefixes a base-model checkpoint may drop
    ignored_suffixes: tuple[str, ...] = ()  # buffers some checkpoints carry (masks, rotary tables)
    key_aliases: Mapping[str, str] = dataclasses.field(default_factory=dict)  # other spelling -> table key
    # its blocks read `LayerInputs.adapter` through `layers.attention_output` (LLaMA-Adapter); a
    # family that does not declare it is refused adaption prompts (a block ignoring them would train
    # them with a zero gradient)
    adaption_prompts: bool = False

    # ---- the embed trio, from the key table unless the family gives its own ----------------------

    def head_row(self, c: ModelConfig) -> KeyRow | None:
        """The untied output head's row, or None for a tied head (the embedding table serves)."""
        if c.tie_word_embeddings:
            return None
        tied = {hf for hf, _, _ in self.key_table(c.replace(tie_word_embeddings=True))}
        return next(row for row in self.key_table(c) if row[0] not in tied)

    def token_table(self, params: dict, c: ModelConfig) -> Float[Array, "V E"]:
        """The token-embedding table as stored (the key table's first row)."""
        return from_bits(leaf_at(params, self.key_table(c)[0][1]))

    def vocabulary_leaves(self, c: ModelConfig) -> dict[str, tuple[tuple[str, ...], int]]:
        """Where the input table and the output head are stored, and their vocabulary axis:
        {"input": (path, 0), "output": (path, axis)}; a tied head is the input table's leaf."""
        token = self.key_table(c)[0][1]
        row = self.head_row(c)
        return {"input": (token, 0), "output": (token, 0) if row is None else (row[1], 1 if row[2] else 0)}

    def embed_tokens(self, params: dict, tokens: Int[Array, "B T"], c: ModelConfig) -> Float[Array, "B T E"]:
        # rows gathered before a table held as bits is read as bf16: inside a decode loop, XLA would
        # convert the whole (loop-invariant) table ahead of the loop
        if self.embed:
            return self.embed(params, tokens, c)
        return from_bits(leaf_at(params, self.key_table(c)[0][1])[tokens])

    def input_embeddings(self, params: dict, c: ModelConfig) -> Float[Array, "V E"]:
        """Input token embeddings as the transformer sees them: the space prompts live in."""
        return self.embedding_table(params, c) if self.embedding_table else self.token_table(params, c)

    def output_table(self, params: dict, c: ModelConfig) -> Float[Array, "V E"]:
        """The output head as [V, E]: the token table when tied, else the head row's weight."""
        if self.output_embedding:
            return self.output_embedding(params, c)
        row = self.head_row(c)
        if row is None:
            return self.token_table(params, c)
        head = from_bits(leaf_at(params, row[1]))
        return head.T if row[2] else head  # a transposed row is stored (E, V), HF's (V, E) weight


def leaf_at(tree: dict, path: tuple[str, ...]):
    for name in path:
        tree = tree[name]
    return tree


def with_leaf(tree: dict, path: tuple[str, ...], value) -> dict:
    """`tree` with the leaf at `path` replaced (new dicts along the path, the rest shared)."""
    if not path:
        return value
    return {**tree, path[0]: with_leaf(tree[path[0]], path[1:], value)}
