"""Norms (LayerNorm, RMSNorm), dense projections, activations and the gated MLP.

Axes (see docs/architecture.md): B batch, T current tokens, S key slots, P prefix length,
H query heads, G key/value heads (H = G * R), K head width, D model width, L layers.
"""
from __future__ import annotations

import math
from typing import Callable

import jax
import jax.numpy as jnp
from jaxtyping import Array, Float

from jaxprompt.models.layers.quantized import Quantized, quantized_matmul

# ---- norms -----------------------------------------------------------------------------------

def layer_norm(x: Float[Array, "... D"], p: dict | None, eps: float) -> Float[Array, "... D"]:
    """LayerNorm with fp32 statistics; `p` None (or empty) for a non-affine norm."""
    x32 = x.astype(jnp.float32)
    mean = x32.mean(-1, keepdims=True)
    var = jnp.square(x32 - mean).mean(-1, keepdims=True)
    y = (x32 - mean) * jax.lax.rsqrt(var + eps)
    if p:
        y = y * p["scale"].astype(jnp.float32) + p["bias"].astype(jnp.float32)
    return y.astype(x.dtype)


def rms_norm(x: Float[Array, "... D"], scale: Float[Array, "D"], eps: float, unit_offset: bool = False
             ) -> Float[Array, "... D"]:
    """RMSNorm (Zhang & Sennrich 2019) with fp32 statistics.

    Llama casts the normalised input back to its dtype, then multiplies by the weight; Gemma
    multiplies by `1 + weight` in fp32 and casts last (`unit_offset`). Both orders are kept so bf16
    results round as in transformers.
    """
    x32 = x.astype(jnp.float32)
    y = x32 * jax.lax.rsqrt(jnp.mean(jnp.square(x32), axis=-1, keepdims=True) + eps)
    if unit_offset:
        return (y * (1.0 + scale.astype(jnp.float32))).astype(x.dtype)
    return scale * y.astype(x.dtype)


# ---- dense and activations -------------------------------------------------------------------

def dense(x: Float[Array, "... I"], p: dict) -> Float[Array, "... O"]:
    kernel = p["kernel"]  # a float array, or integers and scales (`--quantize`, layers/quantized.py)
    y = quantized_matmul(x, kernel) if isinstance(kernel, Quantized) else x @ kernel
    if "bias" in p:
        y = y + p["bias"]
    return y


_GELU_C = math.sqrt(2 / math.pi)


@jax.custom_vjp
def gelu_tanh(x):
    """Tanh-approximated GELU (GPT-2, Gemma). Its backward reuses the forward's tanh (residual),
    which on CPU makes a GPT-2 prompt-tuning step ~15% faster than differentiating through it."""
    return _gelu_fwd(x)[0]


def _gelu_fwd(x):
    t = jnp.tanh(_GELU_C * (x + 0.044715 * x**3))
    return 0.5 * x * (1 + t), (x, t)


def _gelu_bwd(res, g):
    x, t = res
    return (g * (0.5 * (1 + t) + 0.5 * x * (1 - t * t) * _GELU_C * (1 + 3 * 0.044715 * x * x)),)


gelu_tanh.defvjp(_gelu_fwd, _gelu_bwd)


ACTIVATIONS: dict[str, Callable] = {
    "gelu_new": gelu_tanh,
    "gelu_pytorch_tanh": gelu_tanh,
    "gelu": lambda x: jax.nn.gelu(x, approximate=False),
    "relu": jax.nn.relu,
    "silu": jax.nn.silu,
}


def activation(name: str) -> Callable:
    if name not in ACTIVATIONS:
        raise ValueError(f"unsupported activation {name!r}; known: {', '.join(ACTIVATIONS)}")
    return ACTIVATIONS[name]


def gated_mlp(x: Float[Array, "... D"], p: dict, act: Callable) -> Float[Array, "... D"]:
    """`down(act(gate(x)) * up(x))`: SwiGLU with SiLU, GeGLU with GELU (Shazeer 2020)."""
    return dense(act(dense(x, p["gate_proj"])) * dense(x, p["up_proj"]), p["down_proj"])
