"""Attention by `jax.nn.dot_product_attention`: cuDNN's fused (flash) kernel on a GPU, which never
holds a [B, H, T, S] score tensor, and XLA's reference implementation of the same call (the test
of the geometry below on a CPU). `attention.attend` calls `fused_attention` where `implementation`
says a kernel serves the call; the einsum path stays for everything else.

Which implementation, decided here and nowhere else:

- "auto" (a model's default): "cudnn" on a GPU, "einsum" elsewhere. On a CPU the einsum path is
  the faster (`scripts/bench/bench_attention.py`); on a TPU `jax.nn.dot_product_attention` has no
  kernel of its own (its XLA implementation is the einsum path again).
- per call, a kernel that cannot take the call falls back to "einsum", with its reason named
  (`FALLBACKS`, logged once per reason): a logit soft-cap (Gemma 2), float32 inputs, one query
  (a decode step streams the cache: nothing to fuse), a head width cuDNN does not take.

Axes: B batch, T queries, S keys, P prefix slots, H query heads, G key/value heads, K head width.
"""
from __future__ import annotations

import logging

import jax
import jax.numpy as jnp
from jaxtyping import Array, Bool, Float

IMPLEMENTATIONS = ("auto", "einsum", "xla", "cudnn")

FALLBACKS = {
    "softcap": "logit soft-cap (Gemma 2): no kernel of jax.nn.dot_product_attention takes one",
    "float32": "float32 inputs: cuDNN's fused attention takes bf16/fp16 only",
    "one query": "one query per row (a decode step): it streams the cache, there is nothing to fuse",
    "head width": "head width: cuDNN takes a multiple of 8, at most 128 (256 from Hopper on)",
    "not a gpu": "cuDNN needs a GPU",
}

_log = logging.getLogger(__name__)
_said: set[str] = set()


def resolve(requested: str, backend: str | None = None) -> str:
    """The implementation a model asks for, with "auto" decided by the backend."""
    if requested not in IMPLEMENTATIONS:
        raise ValueError(f"unknown attention implementation {requested!r}; use one of {', '.join(IMPLEMENTATIONS)}")
    if requested != "auto":
        return requested
    return "cudnn" if (backend or jax.default_backend()) == "gpu" else "einsum"


def fallback_reason(implementation: str, dtype, queries: int, head_dim: int, softcap: float | None,
                    backend: str | None = None, capability: float | None = None) -> str | None:
    """Why `implementation` cannot take this call (a key of `FALLBACKS`), or None when it can."""
    if implementation == "einsum":
        return None
    if softcap is not None:
        return "softcap"
    if implementation == "xla":
        return None
    if (backend or jax.default_backend()) != "gpu":
        return "not a gpu"
    if jnp.dtype(dtype) not in (jnp.dtype(jnp.bfloat16), jnp.dtype(jnp.float16)):
        return "float32"
    if queries == 1:
        return "one query"
    widest = 256 if (capability if capability is not None else _capability()) >= 9.0 else 128
    if head_dim % 8 or head_dim > widest:
        return "head width"
    return None


def _capability() -> float:
    return float(getattr(jax.devices()[0], "compute_capability", "0") or 0)


def unsupported(implementation: str, error: Exception) -> str:
    """The einsum path, for a call a kernel refused while tracing (`NotImplementedError`: a limit
    `fallback_reason` does not know), the refusal logged once."""
    if str(error) not in _said:
        _said.add(str(error))
        _log.warning("attention: %s refused a call (%s); the einsum path computes it", implementation, error)
    return "einsum"


def choose(implementation: str, dtype, queries: int, head_dim: int, softcap: float | None) -> str:
    """The implementation that serves this call: `implementation`, or "einsum" where it cannot
    (the reason logged once)."""
    reason = fallback_reason(implementation, dtype, queries, head_dim, softcap)
    if reason is None:
        return implementation
    if reason not in _said:
        _said.add(reason)
        _log.info("attention: %s falls back to the einsum path: %s", implementation, FALLBACKS[reason])
    return "einsum"


def fused_attention(
    q: Float[Array, "B T H K"], k: Float[Array, "B S G K"], v: Float[Array, "B S G K"],
    key_mask: Bool[Array, "B T S"], prefix_k: Float[Array, "Bp P G K"] | None,
    prefix_v: Float[Array, "Bp P G K"] | None, prefix_mask: Bool[Array, "B T P"] | None, scale: float,
    causal: bool, implementation: str, even: bool | None = None,
) -> Float[Array, "B T H K"]:
    """softmax(scale q.k) v over [prefix | keys], each query reading the keys its mask allows.

    `causal`: the T queries are the last T keys, in order (no cache): the queries are then led by
    S - T dummy queries so that the kernel's own causal mask (query i reads keys 0..i, which lets
    cuDNN skip the tiles above the diagonal) is exactly ours, prefix included; the mask still
    carries padding and windows. `even`: one masked key slot leads when S is odd, and one dummy
    query follows when T is (cuDNN's backward pass with a mask needs even lengths); by default for
    cuDNN only.
    """
    B, T = q.shape[:2]
    dtype = q.dtype
    k, v = k.astype(dtype), v.astype(dtype)
    mask = key_mask
    if prefix_k is not None:
        shape = (B, *prefix_k.shape[1:])  # a shared prefix (batch 1) is read by every row
        k = jnp.concatenate([jnp.broadcast_to(prefix_k.astype(dtype), shape), k], axis=1)
        v = jnp.concatenate([jnp.broadcast_to(prefix_v.astype(dtype), shape), v], axis=1)
        mask = jnp.concatenate([prefix_mask, mask], axis=-1)
    even = implementation == "cudnn" if even is None else even
    if even and k.shape[1] % 2:
        k, v = (jnp.pad(x, ((0, 0), (1, 0), (0, 0), (0, 0))) for x in (k, v))
        mask = jnp.pad(mask, ((0, 0), (0, 0), (1, 0)))  # never read
    lead = k.shape[1] - T if causal else 0
    trail = int(even and (lead + T) % 2)  # with a cache: one dummy query after the last
    if lead or trail:
        q = jnp.pad(q, ((0, 0), (lead, trail), (0, 0), (0, 0)))
        mask = jnp.pad(mask, ((0, 0), (lead, trail), (0, 0)), constant_values=True)  # dummy rows, thrown away
    out = jax.nn.dot_product_attention(q, k, v, mask=mask[:, None], scale=scale, is_causal=causal,
                                       implementation=implementation)
    return out[:, lead:lead + T]
