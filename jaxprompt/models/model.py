"""A frozen causal LM: `embed(tokens)` then `transformer(embeds, positions, mask)` then `unembed`.

A prompt is inserted between `embed` and `transformer` (or, for prefix tuning, handed to the
transformer as extra keys/values), so every prompt method is an ordinary function in between.
"""

from __future__ import annotations

import dataclasses
import math

import jax
import jax.numpy as jnp
import numpy as np
from jaxtyping import Array, Bool, Float, Int

from jaxprompt.models.architecture import Architecture, leaf_at, with_leaf
from jaxprompt.models.layers.attention import Adapter, KVCache, Prefix
from jaxprompt.models.layers.bits import bits_in_place
from jaxprompt.models.layers.fused import resolve
from jaxprompt.models.layers.stack import StackInputs, remat_policy
from jaxprompt.models.model_config import ConfigError, ModelConfig
from jaxprompt.models.registry import architecture, require_adaption_prompts
from jaxprompt.precision import LOGITS_DTYPE, converts_layer_by_layer

# blocks of vocabulary rows a table held as bits is converted in (`Model.over_vocabulary`)
VOCABULARY_BLOCKS = 8


def positions_from_mask(attention_mask: Bool[Array, "B T"], start: Int[Array, "B"] | int = 0) -> Int[Array, "B T"]:
    """Position ids that count real tokens only, so left and right padding give the same positions.

    `start` is the number of real tokens already before this segment (prefix or cache).
    """
    mask = attention_mask.astype(jnp.int32)
    return jnp.maximum(jnp.cumsum(mask, axis=1) - 1, 0) + jnp.asarray(start, jnp.int32).reshape(-1, 1)


class PositionError(ConfigError):
    """An input that needs positions the model does not have (they would be computed clamped)."""


def check_positions_fit(positions: Int[Array, "B T"], attention_mask: Bool[Array, "B T"], prefix_length: int,
                        max_positions: int) -> None:
    """Refuses real tokens at positions past the model's table; the prefix takes positions 0..P-1.

    Shapes are static under `jit`, so P + T <= max_positions settles it for every call that stays
    within the table (decode steps among them). Past that (a batch padded beyond the limit, whose
    real tokens may still fit), the real tokens' positions decide: checked at once when they are
    concrete, and from inside the computation when traced (then the error arrives wrapped in
    XLA's runtime error).
    """
    if prefix_length + positions.shape[1] <= max_positions:
        return

    def check(positions, mask):
        real = np.asarray(positions)[np.asarray(mask, bool)]
        last = int(real.max()) if real.size else -1
        if last >= max_positions:
            raise PositionError(f"the input needs {last + 1} positions (prefix {prefix_length} included); "
                                f"the model has {max_positions}")

    if isinstance(positions, jax.core.Tracer) or isinstance(attention_mask, jax.core.Tracer):
        jax.debug.callback(check, positions, attention_mask)
    else:
        check(positions, attention_mask)


@dataclasses.dataclass(frozen=True)
class Model:
    """A frozen LM architecture. Hashable, so it can be closed over by `jit`.

    All methods are pure functions of an explicit params pytree.
    """

    config: ModelConfig
    remat: bool | str = False  # rematerialise blocks in the backward pass: a policy of `stack.REMAT` (True: "full")
    attention: str = "auto"  # how attention runs (`layers/fused.py`): "auto", "einsum", "xla" or "cudnn"

    def __post_init__(self):
        architecture(self.config.model_type)  # unknown model types fail here, with the supported list
        resolve(self.attention)  # and unknown attention implementations and remat policies
        remat_policy(self.remat)

    @property
    def arch(self) -> Architecture:
        return architecture(self.config.model_type)

    # ---- parameters -----------------------------------------------------------------------

    def param_shapes(self, dtype=jnp.float32) -> dict:
        """The params pytree as `jax.ShapeDtypeStruct`s (no memory)."""
        return jax.tree.map(lambda s: jax.ShapeDtypeStruct(s, jnp.dtype(dtype)), self.arch.param_shapes(self.config),
                            is_leaf=lambda x: isinstance(x, tuple))

    def init(self, key: jax.Array, dtype=jnp.float32, std: float = 0.02) -> dict:
        """Random init for tests and benchmarks: N(0, std) weights, zero biases, unit norm scales."""
        residual = set(self.arch.residual_projections)
        norm_scale = 0.0 if self.arch.unit_offset_norms else 1.0  # Gemma's norms multiply by (1 + w)

        def leaf(path, spec, k):
            names = tuple(e.key for e in path)
            if names[-1] == "bias":
                return jnp.zeros(spec.shape, spec.dtype)
            if names[-1] == "scale":
                return jnp.full(spec.shape, norm_scale, spec.dtype)
            scale = std / math.sqrt(2 * self.config.n_layers) if names in residual else std
            return (scale * jax.random.normal(k, spec.shape, jnp.float32)).astype(spec.dtype)

        shapes = self.param_shapes(dtype)
        flat, treedef = jax.tree_util.tree_flatten_with_path(shapes)
        keys = jax.random.split(key, max(len(flat), 1))
        return jax.tree_util.tree_unflatten(treedef, [leaf(p, s, k) for (p, s), k in zip(flat, keys)])

    def num_params(self, params=None) -> int:
        tree = self.param_shapes() if params is None else params
        return sum(math.prod(x.shape) for x in jax.tree.leaves(tree))

    # ---- the data flow ----------------------------------------------------------------------

    def embed(self, params: dict, tokens: Int[Array, "B T"]) -> Float[Array, "B T E"]:
        return self.arch.embed_tokens(params, tokens, self.config)

    def embedding_table(self, params: dict) -> Float[Array, "V E"]:
        """Input token embeddings as the transformer sees them: the space prompts live in."""
        return self.arch.input_embeddings(params, self.config)

    def transformer(
        self,
        params: dict,
        embeds: Float[Array, "B T E"],
        positions: Int[Array, "B T"],
        attention_mask: Bool[Array, "B T"],
        cache: KVCache | None = None,
        prefix: Prefix | None = None,
        adapter: Adapter | None = None,
    ) -> tuple[Float[Array, "B T E"], KVCache | None]:
        """Final hidden states (after the last norm/projection), and the updated cache if one was given.

        Real tokens past the model's positions are refused (`PositionError`, `check_positions_fit`).

        `prefix`: keys/values attended before the tokens (prefix tuning, a shared head);
        `adapter`: adaption prompts read by each layer through a gate (LLaMA-Adapter), on an
        architecture that declares them.
        """
        if adapter is not None:
            require_adaption_prompts(self.config.model_type)
        check_positions_fit(positions, attention_mask, 0 if prefix is None else prefix.length,
                            self.config.max_positions)
        inputs = StackInputs(embeds, positions, attention_mask, cache, prefix, adapter, resolve(self.attention))
        return self.arch.transformer(params, inputs, self.config, self.remat)

    def unembed(self, params: dict, hidden: Float[Array, "... E"]) -> Float[Array, "... V"]:
        """Logits in fp32, whatever the compute dtype (soft-capped where the architecture caps them)."""
        if self.held_as_bits(params, "output"):
            # a CPU, which multiplies bf16 in float32 anyway: the same products, and the hidden
            # states' gradient summed over the table's blocks in float32, rounded once
            hidden = hidden.astype(LOGITS_DTYPE)
        logits = self.over_vocabulary(params, lambda rows, _: jnp.einsum(
            "...e,ve->...v", hidden, rows.astype(hidden.dtype), preferred_element_type=LOGITS_DTYPE), "output")
        cap = self.config.final_softcap
        return logits if cap is None else cap * jnp.tanh(logits / cap)

    def over_vocabulary(self, params: dict, fn, table: str = "input", combine: str = "concatenate",
                        blocks: int = VOCABULARY_BLOCKS) -> Array:
        """`fn(rows [v, E], ids [v] | None)` over the whole vocabulary: the input embeddings as the
        transformer sees them (`table="input"`) or the output head (`"output"`). `combine`:
        "concatenate" joins results `[..., v]` along the last axis into `[..., V]`; "sum" adds
        results up, and then a row seen twice comes with the id -1 (`fn` masks it). `ids` is None
        when `rows` is the whole table, in order.

        A table held as bits (bf16 on a CPU, `hold_as_bits`) goes to `fn` in `blocks` blocks of
        rows, each converted where it is used and recomputed in the backward pass: XLA's CPU
        backend multiplies bf16 in float32, and a program that converts the whole table holds a
        float32 copy of it (1.05 GB at Llama-3.2-1B's 128,256 x 2,048). Any other table goes whole."""
        path, axis = self.arch.vocabulary_leaves(self.config)[table]
        stored = leaf_at(params, path)
        rows_of = self.embedding_table if table == "input" else lambda p: self.arch.output_table(p, self.config)
        V = stored.shape[axis]
        if not self.held_as_bits(params, table) or blocks <= 1 or V <= blocks * blocks:
            return fn(rows_of(params), None)  # (blocks of a tiny table could start twice at V - size)
        size = -(-V // blocks)
        # the last block ends at V: it starts early and repeats rows of the one before
        starts = jnp.minimum(jnp.arange(blocks) * size, V - size)
        seen = (blocks - 1) * size  # rows before the last block's new ones

        @jax.checkpoint
        def block(start):
            ids = start + jnp.arange(size)
            ids = jnp.where((start == V - size) & (ids < seen), -1, ids) if combine == "sum" else ids
            return fn(rows_of(with_leaf(params, path, jax.lax.dynamic_slice_in_dim(stored, start, size, axis))), ids)

        if combine == "sum":
            return jax.lax.scan(lambda total, start: (total + block(start), None),
                                jnp.zeros_like(jax.eval_shape(block, starts[0])), starts)[0]
        out = jax.lax.map(block, starts)  # [blocks, ..., size]
        whole = jnp.moveaxis(out[:-1], 0, -2).reshape(*out.shape[1:-1], seen)
        return jnp.concatenate([whole, out[-1][..., seen - (V - size):]], axis=-1)

    def held_as_bits(self, params: dict, table: str) -> bool:
        """Whether the vocabulary table `table` ("input" or "output") is held as bits (`hold_as_bits`)."""
        return leaf_at(params, self.arch.vocabulary_leaves(self.config)[table][0]).dtype == jnp.uint16

    def hold_as_bits(self, params: dict, hold=bits_in_place) -> dict:
        """The frozen weights as this backend's programs take them, in the same memory: bf16 on a CPU
        holds the layer stack (`layers.as_bits`) and the vocabulary tables (`over_vocabulary`) as raw
        16-bit integers, so no program converts the whole of either to float32 ahead of its use.
        `hold` turns a tree of bf16 weights into bits (`jaxprompt.plan` passes shapes)."""
        if not any(converts_layer_by_layer(x.dtype) for x in jax.tree.leaves(params)):
            return params
        held = {**params, self.arch.stack_key: hold(params[self.arch.stack_key])}
        for path, _ in self.arch.vocabulary_leaves(self.config).values():
            held = with_leaf(held, path, hold(leaf_at(held, path)))
        return held

    def forward(
        self,
        params: dict,
        embeds: Float[Array, "B T E"],
        positions: Int[Array, "B T"],
        attention_mask: Bool[Array, "B T"],
        cache: KVCache | None = None,
        prefix: Prefix | None = None,
        adapter: Adapter | None = None,
    ) -> tuple[Float[Array, "B T V"], KVCache | None]:
        hidden, cache = self.transformer(params, embeds, positions, attention_mask, cache, prefix, adapter)
        return self.unembed(params, hidden), cache

    def logits(self, params: dict, tokens: Int[Array, "B T"], attention_mask: Bool[Array, "B T"] | None = None):
        """Convenience: logits of plain token input (no prompt)."""
        if attention_mask is None:
            attention_mask = jnp.ones(tokens.shape, bool)
        return self.forward(params, self.embed(params, tokens), positions_from_mask(attention_mask), attention_mask)[0]

    def init_cache(self, batch: int, slots: int, dtype=jnp.float32, per_layer: bool = False,
                   per_row: bool = False) -> KVCache:
        c = self.config
        return KVCache.empty(c.n_layers, batch, slots, c.n_kv_heads, c.head_dim, dtype, per_layer, per_row)

    def decoding_params(self, params: dict) -> dict:
        """The same weights with the layer stack split into one tree per layer, for decoding.

        A scan over stacked weights slices each layer's weights out of the stack, and XLA's CPU
        compiler copies every such slice before its matmul: a decode step, which only streams
        weights, then moves them three times. With one buffer per layer (and a per-layer KV cache,
        `init_cache(per_layer=True)`) the unrolled layers read their weights in place; on the 2-core
        CPU this makes a GPT-2 decode step at batch 8 about 2.5 times faster. Training keeps the
        stack: its scan keeps compile time independent of depth. bf16 weights on a CPU decode from
        the stack too (`generate._scans_layers`): smaller and faster there (8 tokens of
        Llama-3.2-1B: 7.9 GB and 30 s, against 10.1 GB and 42 s).
        """
        key = self.arch.stack_key
        if isinstance(params[key], tuple):
            return params
        return {**params, key: tuple(jax.tree.map(lambda x, i=i: x[i], params[key])
                                     for i in range(self.config.n_layers))}
