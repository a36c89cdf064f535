"""Attention alone, forward and backward (as a training step runs it): the einsum path against the
fused implementations this backend has (`layers/fused.py`: XLA's everywhere, cuDNN on a GPU), the
implementations taking turns (`benchlib.interleaved`); each one's largest distance from the
einsum path's output on the same inputs, and its compiled temporaries (the einsum path holds the
[B, H, T, S] scores; a flash kernel does not).

Shapes: Llama-3.2-1B's heads (32 query, 8 key/value, width 64) and Llama-3.1-8B's (width 128),
a shared prefix of 20 keys before T tokens, right padding in one row.

    python scripts/bench/bench_attention.py --dtype float32 --lengths 128 --batch 2   # a CPU
    python scripts/bench/bench_attention.py                                          # a GPU, bf16
"""

from __future__ import annotations

import argparse
import os
import statistics
import sys

import jax
import jax.numpy as jnp
import numpy as np

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__)))))
from benchlib import interleaved  # noqa: E402

from jaxprompt.models.layers.attention import (  # noqa: E402
    AttentionSpec,
    LayerInputs,
    attend,
    key_masks,
)

HEADS = {"1b": (32, 8, 64), "8b": (32, 8, 128)}
PREFIX = 20


def inputs(B: int, T: int, heads, dtype):
    H, G, K = heads
    keys = jax.random.split(jax.random.key(0), 5)
    q, k, v = (jax.random.normal(key, (B, T, n, K), dtype) for key, n in zip(keys, (H, G, G)))
    pk, pv = (jax.random.normal(key, (1, PREFIX, G, K), dtype) for key in keys[3:])
    mask = np.ones((B, T), bool)
    mask[-1, T * 3 // 4:] = False  # right padding, as a training batch has
    masks = key_masks(jnp.asarray(mask), jnp.asarray(PREFIX + np.maximum(np.cumsum(mask, 1) - 1, 0)), None,
                      PREFIX, None)
    ctx = LayerInputs(masks.full, None, None, None, pk, pv, masks.prefix_full, None)
    return (q, k, v), ctx, AttentionSpec(scale=K**-0.5)


def step(ctx, spec, implementation):
    """Output and the gradient of a weighted sum of it w.r.t. q, k, v (what the backward pass needs)."""
    ctx = ctx._replace(implementation=implementation)
    out = lambda q, k, v: attend(q, k, v, ctx, spec)[0]
    loss = lambda q, k, v: jnp.sum(out(q, k, v).astype(jnp.float32) ** 2)
    return jax.jit(lambda q, k, v: (out(q, k, v), jax.grad(loss, argnums=(0, 1, 2))(q, k, v)))


def main(argv=None):
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--dtype", default="bfloat16")
    p.add_argument("--lengths", default="512,2048")
    p.add_argument("--batch", type=int, default=4)
    p.add_argument("--rounds", type=int, default=10)
    args = p.parse_args(argv)
    implementations = ["einsum", "xla"] + (["cudnn"] if jax.default_backend() == "gpu" else [])
    print(f"device: {jax.devices()[0].device_kind}; dtype {args.dtype}; batch {args.batch}; prefix {PREFIX}")
    print("| heads | T | implementation | ms (fwd+bwd) | vs einsum | temporaries MiB | largest |out - einsum| |")
    print("|---|---|---|---|---|---|---|")
    for name, heads in HEADS.items():
        for T in map(int, args.lengths.split(",")):
            args_, ctx, spec = inputs(args.batch, T, heads, jnp.dtype(args.dtype))
            fns = {i: step(ctx, spec, i) for i in implementations}
            temps = {i: f.lower(*args_).compile().memory_analysis().temp_size_in_bytes for i, f in fns.items()}
            outs = {i: f(*args_)[0] for i, f in fns.items()}
            times = interleaved({i: lambda f=f, a=args_: jax.block_until_ready(f(*a)) for i, f in fns.items()},
                                args.rounds)
            base = statistics.median(times["einsum"])
            for i in implementations:
                ms = statistics.median(times[i])
                diff = float(jnp.max(jnp.abs(outs[i].astype(jnp.float32) - outs["einsum"].astype(jnp.float32))))
                print(f"| {name} | {T} | {i} | {1e3 * ms:.2f} | {base / ms:.2f}x | {temps[i] / 2**20:.1f} | {diff:.2e} |",
                      flush=True)


if __name__ == "__main__":
    main()
