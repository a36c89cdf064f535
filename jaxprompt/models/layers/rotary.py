"""Rotary position embeddings (Su et al. 2021, "RoFormer"), with Llama 3's and linear
frequency scaling, over the whole head or a part of it (GPT-NeoX's `rotary_pct`).

Axes (see docs/architecture.md): B batch, T current tokens, S key slots, P prefix length,
H query heads, G key/value heads (H = G * R), K head width, D model width, L layers.
"""
from __future__ import annotations

import math

import jax.numpy as jnp
import numpy as np
from jaxtyping import Array, Float, Int

# ---- rotary position embeddings (Su et al. 2021, "RoFormer") ----------------------------------

def rotary_inv_freq(rotary_dim: int, theta: float, scaling: dict | None = None) -> np.ndarray:
    """Inverse frequencies [rotary_dim / 2] in fp32, as transformers computes them.

    `scaling` is a `rope_scaling` dict: type `default`, `linear` (positions divided by `factor`) or
    `llama3` (Llama 3.1: low frequencies divided by `factor`, a smooth ramp in between).
    """
    exponents = np.arange(0, rotary_dim, 2, dtype=np.int64).astype(np.float32) / np.float32(rotary_dim)
    inv_freq = (np.float32(1.0) / (np.float32(theta) ** exponents)).astype(np.float32)
    kind = (scaling or {}).get("rope_type", (scaling or {}).get("type", "default"))
    if kind == "default":
        return inv_freq
    factor = np.float32(scaling["factor"])
    if kind == "linear":
        return inv_freq / factor
    if kind == "llama3":
        low, high = np.float32(scaling["low_freq_factor"]), np.float32(scaling["high_freq_factor"])
        context = np.float32(scaling["original_max_position_embeddings"])
        wavelen = np.float32(2 * math.pi) / inv_freq
        scaled = np.where(wavelen > context / low, inv_freq / factor, inv_freq)
        smooth = (context / wavelen - low) / (high - low)
        smoothed = (1 - smooth) * scaled / factor + smooth * scaled
        medium = ~(wavelen < context / high) & ~(wavelen > context / low)
        return np.where(medium, smoothed, scaled).astype(np.float32)
    raise ValueError(f"unsupported rope_scaling type {kind!r}; jaxprompt supports default, linear, llama3")


def rotary_angles(positions: Int[Array, "B T"], inv_freq: np.ndarray, dtype
                  ) -> tuple[Float[Array, "B T R"], Float[Array, "B T R"]]:
    """cos and sin of position x frequency (fp32, then cast to the compute dtype as transformers does)."""
    freqs = positions.astype(jnp.float32)[..., None] * jnp.asarray(inv_freq)
    angles = jnp.concatenate([freqs, freqs], axis=-1)
    return jnp.cos(angles).astype(dtype), jnp.sin(angles).astype(dtype)


def apply_rotary(x: Float[Array, "B T N K"], cos: Float[Array, "B T R"], sin: Float[Array, "B T R"]
                 ) -> Float[Array, "B T N K"]:
    """Rotates the first R dims of each head (all of them unless the rotary is partial, GPT-NeoX),
    pairing dim i with dim i + R/2 ("rotate half", the transformers layout)."""
    R = cos.shape[-1]
    rot, rest = x[..., :R], x[..., R:]
    half = R // 2
    rotated = jnp.concatenate([-rot[..., half:], rot[..., :half]], axis=-1)
    out = rot * cos[:, :, None] + rotated * sin[:, :, None]
    return jnp.concatenate([out, rest], axis=-1) if rest.shape[-1] else out
