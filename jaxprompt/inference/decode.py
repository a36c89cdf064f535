"""Greedy and sampled decoding with a key/value cache, starting from embeddings.

Starting from embeddings (not tokens) lets a learned prompt's virtual tokens lead the input; a
`Prefix` (prefix tuning, or a prompt's precomputed keys/values) is attended at every step.
"""

from __future__ import annotations

import dataclasses
from functools import partial

import jax
import jax.numpy as jnp
from flax import struct
from jaxtyping import Array, Bool, Float, Int

from jaxprompt.inference.sampling import RowSampling, sample_rows
from jaxprompt.models.layers.attention import Adapter, KVCache, Prefix
from jaxprompt.models.layers.quantized import any_quantized
from jaxprompt.models.model import Model, positions_from_mask
from jaxprompt.precision import converts_layer_by_layer, policy_of

# ---- the decoding steps: `generate`'s loop and the server's scheduler are both made of these -----

@struct.dataclass
class Decoding:
    """Rows between two decode steps: what `generate`'s loop carries, and what the server's
    scheduler (`jaxprompt.scheduler`) keeps for each of its slots."""

    logits: Float[Array, "B V"]  # pick each row's next token
    next_pos: Int[Array, "B"]  # the position that token takes
    length: Int[Array, "B"]  # tokens each row has emitted (its step counter)
    done: Bool[Array, "B"]
    cache: KVCache


def decoding_form(model: Model, params: dict) -> tuple[Model, dict, bool]:
    """(model, params, per-layer cache) as the decode steps run them: one buffer per layer, or the
    stacked layers as bits (bf16 on CPU) or quantized (`_scans_layers`)."""
    if _scans_layers(params, model):  # bf16 on CPU: converted to float32 one layer at a time (`layers.as_bits`)
        return dataclasses.replace(model, remat=True), params, False  # remat: only the bits; nothing is differentiated
    return model, model.decoding_params(params), True  # a copy of the layers, unless already in this form


def prefill(model: Model, params: dict, embeds: Float[Array, "B T E"], attention_mask: Bool[Array, "B T"],
            cache: KVCache, start: Int[Array, "B"] | int, prefix: Prefix | None, adapter: Adapter | None
            ) -> Decoding:
    """The inputs read into `cache`; the logits of each row's first new token."""
    B = embeds.shape[0]
    positions = positions_from_mask(attention_mask, start)
    # the prefill unembeds only the last position: the one whose logits pick the first new token
    # ([B, V], not [B, T, V] float32 logits of which all but the last are thrown away)
    hidden, cache = model.transformer(params, embeds, positions, attention_mask, cache, prefix, adapter)
    logits = model.unembed(params, hidden[:, -1:])[:, -1]
    return Decoding(logits, positions[:, -1] + 1, jnp.zeros(B, jnp.int32), jnp.zeros(B, bool), cache)


def emit(state: Decoding, drawn: Int[Array, "B"], *, max_positions: int, eos_token_id: int | None, pad: int,
         max_tokens: Int[Array, "B"] | None = None) -> tuple[Int[Array, "B"], Decoding]:
    """The drawn token of every running row (padding for rows that stopped); rows stop at EOS, the
    position limit (the new token could not be read) or their own `max_tokens`."""
    token = jnp.where(state.done, pad, drawn)
    length = state.length + (~state.done).astype(jnp.int32)
    done = state.done | (state.next_pos >= max_positions)
    if eos_token_id is not None:
        done = done | (token == eos_token_id)
    if max_tokens is not None:
        done = done | (length >= max_tokens)
    return token, state.replace(length=length, done=done)


def read(model: Model, params: dict, state: Decoding, token: Int[Array, "B"], prefix: Prefix | None,
         adapter: Adapter | None) -> Decoding:
    """One decode step: every row reads its token at its own next position and cache slot."""
    B = token.shape[0]
    logits, cache = model.forward(params, model.embed(params, token[:, None]), state.next_pos[:, None],
                                  jnp.ones((B, 1), bool), state.cache, prefix, adapter)
    return state.replace(logits=logits[:, -1], next_pos=state.next_pos + 1, cache=cache)


def filler(eos_token_id: int | None, pad_token_id: int | None = None) -> int:
    """The token a finished row emits (and reads) from then on: `pad_token_id`, else EOS, else 0."""
    return pad_token_id if pad_token_id is not None else (eos_token_id if eos_token_id is not None else 0)


@partial(jax.jit, static_argnames=("model", "max_new_tokens", "eos_token_id", "pad_token_id"))
def generate(
    model: Model,
    params: dict,
    embeds: Float[Array, "B T E"],
    attention_mask: Bool[Array, "B T"],
    *,
    max_new_tokens: int,
    eos_token_id: int | None = None,
    pad_token_id: int | None = None,
    prefix: Prefix | None = None,
    adapter: Adapter | None = None,
    start: Int[Array, "B"] | None = None,
    sampling: RowSampling | None = None,
) -> tuple[Int[Array, "B N"], Int[Array, "B"]]:
    """New tokens `[B, max_new_tokens]` and each row's length (up to and including EOS).

    Inputs must be left-padded, so every row's next token goes to the same slot. Rows that emit
    `eos_token_id` stop; their remaining slots hold `pad_token_id` (EOS if unset). A row also stops
    at the model's position limit: its last token is the one predicted from position
    `max_positions - 1` (never a position the model does not have). Decoding ends early when every
    row has stopped. Callers that must refuse rather than stop check lengths first (the inputs'
    positions themselves must fit; that is checked where the inputs are built).

    `start`: each row's first position (default: the prefix's length), for a batch whose rows
    attend to prefixes of different lengths (right-padded, their padding masked). `sampling`: each
    row's settings and key (None: greedy), and its `max_tokens` stops each row at its own length: a
    batch mixing short and long requests ends when its longest row does, so a caller can compile
    one `max_new_tokens` for many requested lengths.
    """
    B, T, _ = embeds.shape
    pad = filler(eos_token_id, pad_token_id)
    dtype = policy_of(params).compute_dtype
    if start is None:
        start = 0 if prefix is None else prefix.length
    model, params, per_layer = decoding_form(model, params)
    cache = model.init_cache(B, T + max_new_tokens, dtype, per_layer=per_layer)
    state = prefill(model, params, embeds, attention_mask, cache, start, prefix, adapter)
    max_tokens = None if sampling is None else sampling.max_tokens

    def step(i, state, out):
        """Token i of every row, written to `out`."""
        drawn = sample_rows(state.logits, state.length, sampling)
        token, state = emit(state, drawn, max_positions=model.config.max_positions, eos_token_id=eos_token_id,
                            pad=pad, max_tokens=max_tokens)
        return token, state, out.at[:, i].set(token)

    def cond(carry):
        i, state, _ = carry
        return (i < max_new_tokens - 1) & ~jnp.all(state.done)

    def body(carry):  # emit a token, then read it (the last token is emitted after the loop, never read)
        i, state, out = carry
        token, state, out = step(i, state, out)
        return i + 1, read(model, params, state, token, prefix, adapter), out

    i, state, out = jax.lax.while_loop(cond, body, (jnp.int32(0), state, jnp.full((B, max_new_tokens), pad, jnp.int32)))
    _, state, out = step(i, state, out)  # stopped rows write padding
    return out, state.length


def _scans_layers(params: dict, model: Model) -> bool:
    """Whether decoding runs the stacked layers in a scan rather than one buffer per layer.

    With bf16 weights on a CPU, XLA converts every weight to float32 for its matmuls, and in a
    decode loop it converts all of them once, ahead: a float32 copy of the model (4.9 GB for
    Llama-3.2-1B) beside the per-layer copy `decoding_params` makes. A scan over the stack, its
    layers passed as raw bits, converts one layer at a time instead. Quantized weights
    (`--quantize`) decode from the stack too: `decoding_params` would hold a second copy of the
    quantized layers, one buffer per layer, beside the session's (a 1 GB int8 copy for
    Llama-3.2-1B in the server's scheduler, which makes it outside any program); scanned, each
    layer is dequantized where it runs."""
    key = model.arch.stack_key
    held_as_bits = any(converts_layer_by_layer(x.dtype) or x.dtype == jnp.uint16 for x in jax.tree.leaves(params[key]))
    # bf16, or bf16 held as bits (`layers.bits_in_place`), or quantized
    return not isinstance(params[key], tuple) and (held_as_bits or any_quantized(params[key]))


def left_pad(sequences: list[list[int]], pad_id: int) -> tuple[Int[Array, "B T"], Bool[Array, "B T"]]:
    """Token lists -> left-padded ids and mask, the layout `generate` expects."""
    T = max(len(s) for s in sequences)
    ids = [[pad_id] * (T - len(s)) + list(s) for s in sequences]
    mask = [[False] * (T - len(s)) + [True] * len(s) for s in sequences]
    return jnp.asarray(ids, jnp.int32), jnp.asarray(mask, bool)
