"""The decoder stack: the layers' weights stacked along L and scanned, each block rematerialised
where asked, a KV cache per layer, and under an FSDP layout each layer's weights gathered where
it runs.

Axes (see docs/architecture.md): B batch, T current tokens, S key slots, P prefix length,
H query heads, G key/value heads (H = G * R), K head width, D model width, L layers.
"""
from __future__ import annotations

import contextlib
import contextvars
from typing import Callable, NamedTuple

import jax
import jax.numpy as jnp
from jaxtyping import Array, Bool, Float, Int

from jaxprompt.models.layers.attention import Adapter, KVCache, LayerInputs, Prefix, key_masks
from jaxprompt.models.layers.bits import as_bits, from_bits
from jaxprompt.precision import converts_layer_by_layer

BlockFn = Callable[[dict, Array, LayerInputs], tuple[Array, tuple[Array, Array] | None]]


# Set while a step is traced under an FSDP layout (`parallel.MeshParallel`); read by `decoder_stack`.
_GATHERED_LAYERS: contextvars.ContextVar = contextvars.ContextVar("gathered_layers", default=None)


# What the backward pass recomputes of each layer (`jax.checkpoint` policies). A prompt-tuning step
# needs no weight gradients, so a layer's backward pass reads the frozen weights (never saved) and
# the inputs of its nonlinear parts; "dots" keeps the outputs of the weight matmuls (q/k/v, the
# attention's projection, the MLP's gate/up/down: what norms, rotary, softmax and the activation
# read) and recomputes the rest, "full" keeps only each layer's input.
REMAT = {"none": None, "dots": jax.checkpoint_policies.dots_with_no_batch_dims_saveable,
         "full": jax.checkpoint_policies.nothing_saveable}


def remat_policy(remat: bool | str | None) -> str:
    """A key of `REMAT` from `Model.remat` (False: "none", True: "full")."""
    name = remat if isinstance(remat, str) else "full" if remat else "none"
    if name not in REMAT:
        raise ValueError(f"unknown remat policy {remat!r}; use one of {', '.join(REMAT)}")
    return name


class StackInputs(NamedTuple):
    """What an architecture's transformer reads besides its weights (one structure, so a family's
    transformer is `(params, inputs, config, remat)` and passes it on to `decoder_stack`)."""

    embeds: Float[Array, "B T E"]
    positions: Int[Array, "B T"]
    attention_mask: Bool[Array, "B T"]
    cache: KVCache | None = None
    prefix: Prefix | None = None
    adapter: Adapter | None = None
    attention: str = "einsum"  # how attention runs (`fused.py`): "einsum", "xla" or "cudnn", resolved


@contextlib.contextmanager
def gathered_layers(sharding):
    """While a step is traced inside this context, each layer's weights are constrained to
    `sharding` (whole on every device) where the scan runs the layer: fully sharded data parallel
    (ZeRO-3, Rajbhandari et al. 2020), each layer gathered just before it runs and, in the backward
    pass, gathered again rather than kept: the layer is rematerialised. Recomputing the gathered
    weights alone (a checkpoint policy) was not enough: what the backward pass derives from them (a
    cast, a transpose) was then kept for every layer, 57 GiB of temporaries per device for a
    Llama-3.1-8B step on 8 devices, against 4.6 GiB with the whole layer rematerialised
    (`jaxprompt plan`, float32 proxy). Without this context, XLA's partitioner computes with the
    weight shards where they lie and moves activations instead. A context read at trace time, as
    Flax's logical axis rules are: the model's functions take no device arguments."""
    token = _GATHERED_LAYERS.set(sharding)
    try:
        yield
    finally:
        _GATHERED_LAYERS.reset(token)


def decoder_stack(
    block: BlockFn,
    layers: dict,
    h: Float[Array, "B T D"],
    inputs: StackInputs,
    remat: bool | str = False,
    rotary: tuple[Array, Array] | None = None,
    window: int | None = None,
    windowed_layers: tuple[bool, ...] | None = None,
) -> tuple[Float[Array, "B T D"], KVCache | None]:
    """Runs `block` over the layer-stacked params with `lax.scan` (compile time independent of depth),
    from `h` (the inputs' embeddings as the family prepares them: positions added, projected).

    `window`: sliding-window width for the layers flagged in `windowed_layers` (all when None).
    `remat`: what the backward pass recomputes (`REMAT`; True is "full").
    """
    attention_mask, positions, cache, prefix, adapter = (inputs.attention_mask, inputs.positions, inputs.cache,
                                                         inputs.prefix, inputs.adapter)
    n_layers = len(layers) if isinstance(layers, (tuple, list)) else jax.tree.leaves(layers)[0].shape[0]
    if prefix is not None and prefix.k.shape[0] != n_layers:
        raise ValueError(f"prefix has {prefix.k.shape[0]} layers, the model {n_layers}")
    masks = key_masks(attention_mask, positions, cache, 0 if prefix is None else prefix.length, window)
    if window is None:
        use_window = None
    else:
        flags = windowed_layers if windowed_layers is not None else (True,) * n_layers
        use_window = jnp.asarray(flags, bool)

    gathered = _GATHERED_LAYERS.get()

    def body(h, xs):
        p, ck, cv, pk, pv, pm, windowed, layer_adapter = xs
        p = from_bits(p)
        if gathered is not None:  # the layer's weights whole on every device (`gathered_layers`)
            p = jax.lax.with_sharding_constraint(p, jax.tree.map(lambda _: gathered, p))
        key_mask, prefix_mask = masks.full, masks.prefix_full
        if windowed is not None:
            key_mask = jnp.where(windowed, masks.windowed, masks.full)
            if prefix_mask is not None:
                prefix_mask = jnp.where(windowed, masks.prefix_windowed, prefix_mask)
        if prefix_mask is not None:
            prefix_mask = prefix_mask & pm[:, None, :]  # the layer's own prefix slots (top-k layers)
        ctx = LayerInputs(key_mask, ck, cv, None if cache is None else cache.index, pk, pv, prefix_mask, rotary,
                          layer_adapter, inputs.attention)
        return block(p, h, ctx)

    policy = "full" if gathered is not None else remat_policy(remat)
    if policy != "none":
        body = jax.checkpoint(body, prevent_cse=False, policy=REMAT[policy])
    # bf16 on a CPU: the layers cross the scan as bits, converted where used (`as_bits`); never on a
    # GPU or TPU, where the bitcast inside the program would be a copy of every layer
    bits = policy != "none" and converts_layer_by_layer(jnp.bfloat16)
    if isinstance(layers, (tuple, list)):  # unstacked layers (see `unstack_layers`): an unrolled loop
        outs = []
        for i, p in enumerate(layers):
            at = lambda x: None if x is None else x[i]
            h, kv = body(h, (p, at(None if cache is None else cache.k), at(None if cache is None else cache.v),
                             at(None if prefix is None else prefix.k), at(None if prefix is None else prefix.v),
                             at(None if prefix is None else prefix.mask), at(use_window),
                             None if adapter is None else (adapter.prompt[i], adapter.gate[i])))
            outs.append(kv)
        if cache is not None:  # per-layer cache buffers stay separate (updated in place by a decode loop)
            new_kv = tuple(tuple(part) if isinstance(cache.k, tuple) else jnp.stack(part) for part in zip(*outs))
    else:
        h, new_kv = jax.lax.scan(body, h, (
            as_bits(layers) if bits else layers,
            None if cache is None else cache.k,
            None if cache is None else cache.v,
            None if prefix is None else prefix.k,
            None if prefix is None else prefix.v,
            None if prefix is None else prefix.mask,
            use_window,
            None if adapter is None else (adapter.prompt, adapter.gate),
        ))
    if cache is None:
        return h, None
    k, v = new_kv
    return h, KVCache(k=k, v=v, mask=masks.slot_mask, positions=masks.slot_positions,
                      index=cache.index + attention_mask.shape[1])
