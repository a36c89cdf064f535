"""bf16 weights held as raw 16-bit integers on a CPU, converted to float32 where each layer is used.

XLA's CPU backend has no bf16 matmul: it converts bf16 weights to float32 before each dot, and
inside a scan over layers it hoists the conversion of the whole (loop-invariant) stack ahead of
the loop. Integers cannot be converted ahead, so each layer is converted where it runs. Holding
them is a view of the same buffers, not a copy. On a GPU or TPU nothing is held as bits.
"""
from __future__ import annotations

import jax
import jax.numpy as jnp
import numpy as np
from jaxtyping import Array


def as_bits(layers: dict) -> dict:
    """bf16 weights as raw 16-bit integers (a free bitcast), for a rematerialised scan.

    XLA's CPU backend computes a bf16 matmul in float32, and it converts the whole stacked weights
    before the scan's loops rather than one layer's slice inside them: a float32 copy of every
    layer, twice the bf16 weights (5.3 GB of temporaries in a Llama-3.2-1B training step). Integer
    bits cannot be converted ahead, so each layer is converted where it is used. Without remat the
    backward pass would keep each layer's weights as a residual, a copy of its own; with remat it
    keeps only the layers' inputs. Measured on that step (batch 2, 2-core CPU): temporaries 3.24
    GB against 5.19, and 6.3 s a step against 9.9 (`scripts/bench/scale_check.py`)."""
    return jax.tree.map(lambda w: jax.lax.bitcast_convert_type(w, jnp.uint16) if w.dtype == jnp.bfloat16 else w,
                        layers)


def _viewed_in_place(w: Array, dtype) -> Array | None:
    """A single-device CPU array's buffer as `dtype` of the same width, without a copy: a numpy view
    placed back as an array of the same memory (`jax.device_put` of host memory on a CPU aliases
    it). None for any other array (a tracer, another platform, several devices)."""
    if isinstance(w, jax.core.Tracer):
        return None
    device, *others = w.devices()
    return None if others or device.platform != "cpu" else jax.device_put(np.asarray(w).view(dtype), device)


def bits_in_place(layers):
    """`as_bits` outside a compiled program and without a copy, for weights that every program then
    takes as bits (`_viewed_in_place`; other arrays are left as they are). Inside a program,
    `as_bits` of bf16 weights is a copy of every layer (2.1 GB of temporaries for Llama-3.2-1B)."""
    def one(w):
        viewed = _viewed_in_place(w, np.uint16) if w.dtype == jnp.bfloat16 else None
        return w if viewed is None else viewed

    return jax.tree.map(one, layers)


def from_bits(weights):
    """Weights (one array or a tree) back from `as_bits` (frozen weights hold no integers of their own).

    Inside a program a bitcast; outside one, a single-device CPU array is viewed back in its own
    memory, as `bits_in_place` made it (an eager bitcast would copy it)."""
    def one(w):
        if w.dtype != jnp.uint16:
            return w
        viewed = _viewed_in_place(w, jnp.bfloat16)
        return jax.lax.bitcast_convert_type(w, jnp.bfloat16) if viewed is None else viewed

    return jax.tree.map(one, weights)
