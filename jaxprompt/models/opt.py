"""OPT (Zhang et al. 2022) as pure functions of a layer-stacked params pytree.

Differences from GPT-2 that matter: learned positions offset by 2, pre- or post-layer-norm
(opt-350m is post-LN and has no final layer norm), `project_in`/`project_out` when the token
embedding width (word_embed_proj_dim) differs from the model width, ReLU MLP, separate q/k/v.
Kernels are stored (in, out), i.e. the transpose of PyTorch's nn.Linear weight.
"""

from __future__ import annotations

import jax.numpy as jnp
from jaxtyping import Array, Bool, Float, Int

from jaxprompt.models.config import ModelConfig
from jaxprompt.models.layers import KVCache, LayerInputs, Prefix, activation, attend, decoder_stack, dense, layer_norm


def param_shapes(c: ModelConfig) -> dict:
    L, D, F, E, V = c.n_layers, c.d_model, c.d_ff, c.d_embed, c.vocab_size
    norm = lambda *lead: {"scale": (*lead, D), "bias": (*lead, D)} if c.layer_norm_affine else {}
    linear = lambda i, o: {"kernel": (L, i, o), "bias": (L, o)} if c.use_bias else {"kernel": (L, i, o)}
    shapes = {
        "embed_tokens": {"embedding": (V, E)},
        "embed_positions": {"embedding": (c.max_positions + c.position_offset, D)},
        "layers": {
            "self_attn": {name: linear(D, D) for name in ("q_proj", "k_proj", "v_proj", "out_proj")},
            "self_attn_layer_norm": norm(L),
            "fc1": linear(D, F),
            "fc2": linear(F, D),
            "final_layer_norm": norm(L),
        },
    }
    if c.has_projection:
        shapes["project_in"] = {"kernel": (E, D)}
        shapes["project_out"] = {"kernel": (D, E)}
    if c.final_layer_norm:
        shapes["final_layer_norm"] = norm()
    if not c.tie_word_embeddings:
        shapes["lm_head"] = {"kernel": (E, V)}
    return shapes


RESIDUAL_PROJECTIONS = ()


def input_embedding(params: dict) -> Float[Array, "V E"]:
    return params["embed_tokens"]["embedding"]


def _block(c: ModelConfig):
    act = activation(c.activation)
    H, K, eps = c.n_heads, c.head_dim, c.layer_norm_eps
    norm = lambda x, p: layer_norm(x, p or None, eps)

    def block(p: dict, h: Float[Array, "B T D"], ctx: LayerInputs):
        B, T, D = h.shape
        attn = p["self_attn"]
        x = norm(h, p["self_attn_layer_norm"]) if c.pre_layer_norm else h
        q, k, v = (dense(x, attn[name]).reshape(B, T, H, K) for name in ("q_proj", "k_proj", "v_proj"))
        out, new_kv = attend(q, k, v, ctx)
        h = h + dense(out.reshape(B, T, D), attn["out_proj"])
        if not c.pre_layer_norm:
            h = norm(h, p["self_attn_layer_norm"])
        x = norm(h, p["final_layer_norm"]) if c.pre_layer_norm else h
        h = h + dense(act(dense(x, p["fc1"])), p["fc2"])
        if not c.pre_layer_norm:
            h = norm(h, p["final_layer_norm"])
        return h, new_kv

    return block


def transformer(
    params: dict,
    embeds: Float[Array, "B T E"],
    positions: Int[Array, "B T"],
    attention_mask: Bool[Array, "B T"],
    c: ModelConfig,
    cache: KVCache | None = None,
    prefix: Prefix | None = None,
    remat: bool = False,
) -> tuple[Float[Array, "B T E"], KVCache | None]:
    h = embeds
    if c.has_projection:
        h = h @ params["project_in"]["kernel"]
    h = h + params["embed_positions"]["embedding"][positions + c.position_offset].astype(h.dtype)
    h, cache = decoder_stack(_block(c), params["layers"], h, attention_mask, cache, prefix, remat)
    if c.final_layer_norm:
        h = layer_norm(h, params["final_layer_norm"] or None, c.layer_norm_eps)
    if c.has_projection:
        h = h @ params["project_out"]["kernel"]
    return h, cache


def output_embedding(params: dict, c: ModelConfig) -> Float[Array, "V E"]:
    return params["embed_tokens"]["embedding"] if c.tie_word_embeddings else params["lm_head"]["kernel"].T
