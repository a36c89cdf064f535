"""Frozen causal LMs: `embed(tokens)` then `transformer(embeds, positions, mask)` then `unembed`.

A prompt is inserted between `embed` and `transformer` (or, for prefix tuning, handed to the
transformer as extra keys/values), so every prompt method is an ordinary function in between.
"""

from __future__ import annotations

import dataclasses
import math
from types import ModuleType

import jax
import jax.numpy as jnp
from jaxtyping import Array, Bool, Float, Int

from jaxprompt.models.config import ModelConfig
from jaxprompt.models import gpt2, opt
from jaxprompt.models.layers import KVCache, Prefix
from jaxprompt.precision import LOGITS_DTYPE

ARCHITECTURES: dict[str, ModuleType] = {"gpt2": gpt2, "opt": opt}

__all__ = ["Model", "KVCache", "Prefix", "positions_from_mask"]


def positions_from_mask(attention_mask: Bool[Array, "B T"], start: Int[Array, "B"] | int = 0) -> Int[Array, "B T"]:
    """Position ids that count real tokens only, so left and right padding give the same positions.

    `start` is the number of real tokens already before this segment (prefix or cache).
    """
    mask = attention_mask.astype(jnp.int32)
    return jnp.maximum(jnp.cumsum(mask, axis=1) - 1, 0) + jnp.asarray(start, jnp.int32).reshape(-1, 1)


@dataclasses.dataclass(frozen=True)
class Model:
    """A frozen LM architecture. Hashable, so it can be closed over by `jit`.

    All methods are pure functions of an explicit params pytree.
    """

    config: ModelConfig
    remat: bool = False  # rematerialise each block in the backward pass (saves activation memory)

    @property
    def arch(self) -> ModuleType:
        return ARCHITECTURES[self.config.model_type]

    # ---- parameters -----------------------------------------------------------------------

    def param_shapes(self, dtype=jnp.float32) -> dict:
        """The params pytree as `jax.ShapeDtypeStruct`s (no memory)."""
        return jax.tree.map(lambda s: jax.ShapeDtypeStruct(s, jnp.dtype(dtype)), self.arch.param_shapes(self.config),
                            is_leaf=lambda x: isinstance(x, tuple))

    def init(self, key: jax.Array, dtype=jnp.float32, std: float = 0.02) -> dict:
        """HF-style random init: N(0, std) weights, zero biases, unit layer-norm scales."""
        shapes = self.param_shapes(dtype)
        flat, treedef = jax.tree_util.tree_flatten_with_path(shapes)
        keys = jax.random.split(key, len(flat))
        residual = {tuple(p) for p in self.arch.RESIDUAL_PROJECTIONS}
        leaves = []
        for (path, spec), k in zip(flat, keys):
            names = tuple(getattr(e, "key", e) for e in path)
            if names[-1] == "bias":
                leaves.append(jnp.zeros(spec.shape, spec.dtype))
            elif names[-1] == "scale":
                leaves.append(jnp.ones(spec.shape, spec.dtype))
            else:
                scale = std / math.sqrt(2 * self.config.n_layers) if names in residual else std
                leaves.append((scale * jax.random.normal(k, spec.shape, jnp.float32)).astype(spec.dtype))
        return jax.tree_util.tree_unflatten(treedef, leaves)

    def num_params(self, params=None) -> int:
        tree = self.param_shapes() if params is None else params
        return sum(math.prod(x.shape) for x in jax.tree.leaves(tree))

    # ---- the data flow ----------------------------------------------------------------------

    def embed(self, params: dict, tokens: Int[Array, "B T"]) -> Float[Array, "B T E"]:
        return self.embedding_table(params)[tokens]

    def embedding_table(self, params: dict) -> Float[Array, "V E"]:
        """Input token embeddings: the space prompts live in."""
        return self.arch.input_embedding(params)

    def transformer(
        self,
        params: dict,
        embeds: Float[Array, "B T E"],
        positions: Int[Array, "B T"],
        attention_mask: Bool[Array, "B T"],
        cache: KVCache | None = None,
        prefix: Prefix | None = None,
    ) -> tuple[Float[Array, "B T E"], KVCache | None]:
        """Final hidden states (after the last norm/projection), and the updated cache if one was given."""
        return self.arch.transformer(params, embeds, positions, attention_mask, self.config, cache, prefix, self.remat)

    def unembed(self, params: dict, hidden: Float[Array, "... E"]) -> Float[Array, "... V"]:
        """Logits in fp32, whatever the compute dtype."""
        table = self.arch.output_embedding(params, self.config)
        return jnp.einsum("...e,ve->...v", hidden, table.astype(hidden.dtype), preferred_element_type=LOGITS_DTYPE)

    def forward(
        self,
        params: dict,
        embeds: Float[Array, "B T E"],
        positions: Int[Array, "B T"],
        attention_mask: Bool[Array, "B T"],
        cache: KVCache | None = None,
        prefix: Prefix | None = None,
    ) -> tuple[Float[Array, "B T V"], KVCache | None]:
        hidden, cache = self.transformer(params, embeds, positions, attention_mask, cache, prefix)
        return self.unembed(params, hidden), cache

    def logits(self, params: dict, tokens: Int[Array, "B T"], attention_mask: Bool[Array, "B T"] | None = None):
        """Convenience: logits of plain token input (no prompt)."""
        if attention_mask is None:
            attention_mask = jnp.ones(tokens.shape, bool)
        return self.forward(params, self.embed(params, tokens), positions_from_mask(attention_mask), attention_mask)[0]

    def init_cache(self, batch: int, slots: int, dtype=jnp.float32) -> KVCache:
        c = self.config
        return KVCache.empty(c.n_layers, batch, slots, c.n_heads, c.head_dim, dtype)
