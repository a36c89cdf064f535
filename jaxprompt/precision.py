"""The precision policy, in one place.

- frozen LM weights are stored and computed in `compute_dtype` (fp32 or bf16);
- the prompt's master copy is always fp32 and is cast to `compute_dtype` where it enters the model;
- layer norms and attention softmax accumulate in fp32;
- logits and losses are fp32;
- bf16 weights on a CPU cross the layer scan as raw bits and are converted one layer at a time,
  which needs each block rematerialised in training (`converts_layer_by_layer`); the vocabulary
  tables are held as bits too, and converted a block of rows at a time (`Model.over_vocabulary`);
- with `--quantize int8|int4` the layer stack's matmul weights are held as integers and scales (the
  scales in the compute dtype) and dequantized to it inside each layer, where it runs; the tables,
  norms and biases stay in the compute dtype (models/quantize.py, docs/quantization.md).
"""

from __future__ import annotations

import dataclasses

import jax
import jax.numpy as jnp

DTYPES = {"float32": jnp.float32, "fp32": jnp.float32, "bfloat16": jnp.bfloat16, "bf16": jnp.bfloat16,
          "float16": jnp.float16, "fp16": jnp.float16}

PROMPT_DTYPE = jnp.float32
LOGITS_DTYPE = jnp.float32


def as_dtype(name_or_dtype) -> jnp.dtype:
    if isinstance(name_or_dtype, str):
        if name_or_dtype not in DTYPES:
            raise ValueError(f"unknown dtype {name_or_dtype!r}; use one of {', '.join(DTYPES)}")
        return jnp.dtype(DTYPES[name_or_dtype])
    return jnp.dtype(name_or_dtype)


@dataclasses.dataclass(frozen=True)
class Policy:
    compute_dtype: jnp.dtype = jnp.dtype(jnp.float32)

    @classmethod
    def of(cls, dtype) -> "Policy":
        return cls(compute_dtype=as_dtype(dtype))

    def cast_frozen(self, params):
        """Frozen weights in the compute dtype (floating leaves only)."""
        return jax.tree.map(lambda x: x.astype(self.compute_dtype) if jnp.issubdtype(x.dtype, jnp.floating) else x,
                            params)

    def cast_prompt_in(self, x):
        """The fp32 prompt as it enters the model."""
        return x.astype(self.compute_dtype)


def policy_of(params) -> Policy:
    """The policy implied by the frozen weights' dtype (floating leaves: weights held as bits,
    `Model.hold_as_bits`, are integers and say nothing)."""
    leaves = [x for x in jax.tree.leaves(params) if jnp.issubdtype(x.dtype, jnp.floating)]
    return Policy(compute_dtype=jnp.dtype(leaves[0].dtype) if leaves else jnp.dtype(jnp.float32))


def converts_layer_by_layer(dtype) -> bool:
    """Whether frozen weights of `dtype` run through the layer scan as raw bits, rematerialised
    (`Model.remat`, `layers.as_bits`): bf16 on a CPU, whose XLA backend computes bf16 matmuls in
    float32 and otherwise converts every layer ahead of the scan, a float32 copy of the model. On
    Llama-3.2-1B (batch 2, 2-core CPU) a training step then holds 3.24 GB of temporaries instead of
    5.19 and runs in 6.3 s instead of 9.9; an evaluation or decoding pass (nothing differentiated,
    so nothing is recomputed) keeps one layer's float32 weights instead of all of them."""
    return as_dtype(dtype) == jnp.bfloat16 and jax.default_backend() == "cpu"
