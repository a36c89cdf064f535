"""Prefix tuning (Li & Liang 2021): learned keys and values in every layer, or only the top k.

With `reparam_hidden`, the keys/values are an MLP of a small learned input (the stabilising
reparameterisation used during training); `inference_prompt` bakes them to plain keys/values.
"""

from __future__ import annotations

import dataclasses
import functools
from typing import ClassVar

import flax.linen as nn
import jax
import jax.numpy as jnp
from jaxtyping import Array, Float, Int

from jaxprompt.models import Model, positions_from_mask
from jaxprompt.precision import PROMPT_DTYPE, policy_of
from jaxprompt.prompts.base import PromptMethod
from jaxprompt.prompts.init import sample_ids
from jaxprompt.prompts.settings import PrefixSettings


class PrefixMLP(nn.Module):
    hidden: int
    out: int

    @nn.compact
    def __call__(self, x):
        return nn.Dense(self.out)(jnp.tanh(nn.Dense(self.hidden)(x)))


@functools.partial(jax.jit, static_argnames="model")
def token_kv(model: Model, frozen: dict, ids: Int[Array, "P"]) -> Float[Array, "L P 2 G K"]:
    """The keys/values every layer of the frozen model computes for the tokens `ids` (a prefix's
    start inside the model's own distribution), in float32. Computed in the weights' own dtype (the
    precision policy: norms and softmax accumulate in float32 inside the layers), so no float32 copy
    of the model is made; cast after. One compiled program per model and length: run eagerly, the
    layer scan compiled anew on every call (a K = 1,000 adapter set compiled 1,000 times)."""
    P = ids.shape[0]
    mask = jnp.ones((1, P), bool)
    cache = model.init_cache(1, P, policy_of(frozen).compute_dtype)
    _, cache = model.transformer(frozen, model.embed(frozen, ids[None]), positions_from_mask(mask), mask, cache)
    return jnp.stack([cache.k[:, 0], cache.v[:, 0]], axis=2).astype(PROMPT_DTYPE)


@dataclasses.dataclass(frozen=True)
class PrefixTuning(PrefixSettings, PromptMethod):
    """Keys and values learned for every layer (or the top `top_layers`), attended before the input."""

    takes_positions: ClassVar[bool] = False
    makes_prefix: ClassVar[bool] = True

    def n_layers(self, model: Model) -> int:
        L = model.config.n_layers
        if self.top_layers is not None and not 1 <= self.top_layers <= L:
            raise ValueError(f"top_layers must be in 1..{L}, got {self.top_layers}")
        return L if self.top_layers is None else self.top_layers

    def _mlp(self, model: Model, n: int) -> PrefixMLP:
        c = model.config
        return PrefixMLP(self.reparam_hidden, n * 2 * c.n_kv_heads * c.head_dim)

    def init(self, key, model: Model, frozen: dict, n_virtual: int = 0) -> dict:
        c, n = model.config, self.n_layers(model)
        P = self.length
        if self.reparam_hidden:
            k_in, k_mlp = jax.random.split(key)
            inputs = 0.02 * jax.random.normal(k_in, (P, c.d_model), jnp.float32)
            return {"inputs": inputs, "mlp": self._mlp(model, n).init(k_mlp, inputs)["params"]}
        ids = (jnp.resize(jnp.asarray(self.init_ids, jnp.int32), (P,)) if self.init_from == "text"
               else sample_ids(key, (P,), self.sample_pool, c.vocab_size))
        return {"kv": token_kv(model, frozen, ids)[c.n_layers - n:]}

    def prefix(self, prompt, model: Model, frozen, step):
        c, n = model.config, self.n_layers(model)
        P, G, K = self.length, c.n_kv_heads, c.head_dim
        if "mlp" in prompt:
            flat = self._mlp(model, n).apply({"params": prompt["mlp"]}, prompt["inputs"])  # [P, n * 2 * G * K]
            kv = flat.reshape(P, n, 2, G, K).transpose(1, 0, 2, 3, 4)  # [n, P, 2, G, K]
        else:
            kv = prompt["kv"]
        pad = c.n_layers - n  # lower layers without a prefix: zeros, masked out
        kv = jnp.concatenate([jnp.zeros((pad, *kv.shape[1:]), kv.dtype), kv], axis=0)
        layer_mask = jnp.arange(c.n_layers) >= pad
        return kv[:, :, 0], kv[:, :, 1], layer_mask

    def peft_config(self) -> dict:
        return {"peft_type": "PREFIX_TUNING", "prefix_projection": False}

    def peft_incompatibility(self, template) -> str | None:
        if self.top_layers is not None:
            return (f"a prefix in only the top {self.top_layers} layers cannot be written as PEFT PREFIX_TUNING, "
                    "which puts keys/values in every layer")
        return None

    def inference_prompt(self, prompt, model, frozen):
        """Bakes the reparameterisation MLP into plain keys/values."""
        if "mlp" not in prompt:
            return self, prompt
        k, v, _ = self.prefix(prompt, model, frozen, 0)
        n = self.n_layers(model)
        kv = jnp.stack([k, v], axis=2)[model.config.n_layers - n:]
        return dataclasses.replace(self, reparam_hidden=None), {"kv": kv}
