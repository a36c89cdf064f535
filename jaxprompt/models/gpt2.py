"""GPT-2 (Radford et al. 2019) as pure functions of a layer-stacked params pytree.

Parameter names follow the HF modules (`wte`, `wpe`, `h/attn/c_attn/kernel`, `ln_f`) with the
layer axis stacked first under `h`; Conv1D weights are already (in, out).
"""

from __future__ import annotations

import jax
import jax.numpy as jnp
from jaxtyping import Array, Bool, Float, Int

from jaxprompt.models.config import ModelConfig
from jaxprompt.models.layers import KVCache, LayerInputs, Prefix, activation, attend, decoder_stack, dense, layer_norm


def param_shapes(c: ModelConfig) -> dict:
    L, D, F, V = c.n_layers, c.d_model, c.d_ff, c.vocab_size
    norm = lambda *lead: {"scale": (*lead, D), "bias": (*lead, D)}
    shapes = {
        "wte": {"embedding": (V, D)},
        "wpe": {"embedding": (c.max_positions, D)},
        "h": {
            "ln_1": norm(L),
            "attn": {"c_attn": {"kernel": (L, D, 3 * D), "bias": (L, 3 * D)},
                     "c_proj": {"kernel": (L, D, D), "bias": (L, D)}},
            "ln_2": norm(L),
            "mlp": {"c_fc": {"kernel": (L, D, F), "bias": (L, F)},
                    "c_proj": {"kernel": (L, F, D), "bias": (L, D)}},
        },
        "ln_f": norm(),
    }
    if not c.tie_word_embeddings:
        shapes["lm_head"] = {"kernel": (D, V)}
    return shapes


# Residual projections get GPT-2's 1/sqrt(2 L) init scale.
RESIDUAL_PROJECTIONS = (("h", "attn", "c_proj", "kernel"), ("h", "mlp", "c_proj", "kernel"))


def input_embedding(params: dict) -> Float[Array, "V E"]:
    return params["wte"]["embedding"]


def _block(c: ModelConfig):
    act = activation(c.activation)
    H, K = c.n_heads, c.head_dim

    def block(p: dict, h: Float[Array, "B T D"], ctx: LayerInputs):
        B, T, D = h.shape
        qkv = dense(layer_norm(h, p["ln_1"], c.layer_norm_eps), p["attn"]["c_attn"])
        q, k, v = (x.reshape(B, T, H, K) for x in jnp.split(qkv, 3, axis=-1))
        out, new_kv = attend(q, k, v, ctx)
        h = h + dense(out.reshape(B, T, D), p["attn"]["c_proj"])
        mlp = p["mlp"]
        h = h + dense(act(dense(layer_norm(h, p["ln_2"], c.layer_norm_eps), mlp["c_fc"])), mlp["c_proj"])
        return h, new_kv

    return block


def transformer(
    params: dict,
    embeds: Float[Array, "B T D"],
    positions: Int[Array, "B T"],
    attention_mask: Bool[Array, "B T"],
    c: ModelConfig,
    cache: KVCache | None = None,
    prefix: Prefix | None = None,
    remat: bool = False,
) -> tuple[Float[Array, "B T D"], KVCache | None]:
    h = embeds + params["wpe"]["embedding"][positions].astype(embeds.dtype)
    h, cache = decoder_stack(_block(c), params["h"], h, attention_mask, cache, prefix, remat)
    return layer_norm(h, params["ln_f"], c.layer_norm_eps), cache


def output_embedding(params: dict, c: ModelConfig) -> Float[Array, "V D"]:
    return params["wte"]["embedding"] if c.tie_word_embeddings else params["lm_head"]["kernel"].T
