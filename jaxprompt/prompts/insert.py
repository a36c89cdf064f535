"""Placing virtual tokens into a sequence of token embeddings.

Written for one example and vmapped: the template's `{prompt}` positions carry a slot index
(-1 for real tokens), so prepending, an infix prompt, or several prompt slots are the same call.
"""

from __future__ import annotations

import jax
import jax.numpy as jnp
from jaxtyping import Array, Float, Int


def insert_at_slots(
    embeds: Float[Array, "T E"], virtual: Float[Array, "N E"], slots: Int[Array, "T"]
) -> Float[Array, "T E"]:
    """Position t takes `virtual[slots[t]]` where `slots[t] >= 0`, else keeps its token embedding."""
    picked = virtual[jnp.maximum(slots, 0)].astype(embeds.dtype)
    return jnp.where((slots >= 0)[:, None], picked, embeds)


def insert_batch(
    embeds: Float[Array, "B T E"], virtual: Float[Array, "N E"] | Float[Array, "B N E"], slots: Int[Array, "B T"]
) -> Float[Array, "B T E"]:
    """Batched `insert_at_slots`; `virtual` is shared ([N, E]) or per example ([B, N, E], multi-task)."""
    return jax.vmap(insert_at_slots, in_axes=(0, 0 if virtual.ndim == 3 else None, 0))(embeds, virtual, slots)


def prepend(embeds: Float[Array, "T E"], virtual: Float[Array, "P E"]) -> Float[Array, "P+T E"]:
    """Lester et al.'s layout: virtual tokens before the input."""
    return jnp.concatenate([virtual.astype(embeds.dtype), embeds], axis=0)
