"""The precision policy, in one place.

- frozen LM weights are stored and computed in `compute_dtype` (fp32 or bf16);
- the prompt's master copy is always fp32 and is cast to `compute_dtype` where it enters the model;
- layer norms and attention softmax accumulate in fp32;
- logits and losses are fp32.
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
    """The policy implied by the frozen weights' dtype."""
    leaves = [x for x in jax.tree.leaves(params) if jnp.issubdtype(x.dtype, jnp.floating)]
    return Policy(compute_dtype=jnp.dtype(leaves[0].dtype) if leaves else jnp.dtype(jnp.float32))
