"""GPT-2 (Radford et al. 2019): learned absolute positions, pre-LayerNorm blocks, fused q/k/v.

Parameter names follow the HF modules (`wte`, `wpe`, `h/attn/c_attn/kernel`, `ln_f`) with the
layer axis stacked first under `h`; GPT-2's Conv1D weights are already (in, out).
"""

from __future__ import annotations

import math
from typing import Any, Mapping

import jax.numpy as jnp
from jaxtyping import Array, Float

from jaxprompt.models.architecture import Architecture, KeyRow, TokenizerConventions
from jaxprompt.models.layers.attention import AttentionSpec, KVCache, LayerInputs, attend, attention_output
from jaxprompt.models.layers.basic import activation, dense, layer_norm
from jaxprompt.models.layers.stack import StackInputs, decoder_stack
from jaxprompt.models.model_config import ModelConfig, read_fields, refuse, write_fields

# ours -> config.json name: the one table that reads and writes config.json
HF_FIELDS = {
    "vocab_size": "vocab_size", "max_positions": "n_positions", "d_model": "n_embd", "n_layers": "n_layer",
    "n_heads": "n_head", "d_ff": "n_inner", "activation": "activation_function", "norm_eps": "layer_norm_epsilon",
    "tie_word_embeddings": "tie_word_embeddings", "bos_token_id": "bos_token_id", "eos_token_id": "eos_token_id",
    "pad_token_id": "pad_token_id",
}
# transformers' defaults for keys a config.json may omit
HF_DEFAULTS = {
    "vocab_size": 50257, "n_positions": 1024, "n_embd": 768, "n_layer": 12, "n_head": 12,
    "activation_function": "gelu_new", "layer_norm_epsilon": 1e-5, "tie_word_embeddings": True,
    "bos_token_id": 50256, "eos_token_id": 50256,
}
UNSUPPORTED = {"scale_attn_by_inverse_layer_idx": False, "reorder_and_upcast_attn": False,
               "add_cross_attention": False, "scale_attn_weights": True}

PRESETS: dict[str, dict[str, Any]] = {
    "gpt2": {"model_type": "gpt2", "n_embd": 768, "n_layer": 12, "n_head": 12},
    "distilgpt2": {"model_type": "gpt2", "n_embd": 768, "n_layer": 6, "n_head": 12},
    "gpt2-medium": {"model_type": "gpt2", "n_embd": 1024, "n_layer": 24, "n_head": 16},
    "gpt2-large": {"model_type": "gpt2", "n_embd": 1280, "n_layer": 36, "n_head": 20},
    "gpt2-xl": {"model_type": "gpt2", "n_embd": 1600, "n_layer": 48, "n_head": 25},
}


def config_from_hf(hf: Mapping[str, Any]) -> ModelConfig:
    refuse(hf, "GPT-2", UNSUPPORTED)
    fields = read_fields(hf, HF_FIELDS, HF_DEFAULTS)
    fields["d_ff"] = fields["d_ff"] or 4 * fields["d_model"]  # n_inner=None means 4 * n_embd
    return ModelConfig(model_type="gpt2", **fields)


def config_to_hf(c: ModelConfig) -> dict[str, Any]:
    return {"model_type": "gpt2", "architectures": ["GPT2LMHeadModel"], **write_fields(c, HF_FIELDS)}


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


def key_table(c: ModelConfig) -> list[KeyRow]:
    norm = lambda hf, path: [(f"{hf}.weight", (*path, "scale"), False), (f"{hf}.bias", (*path, "bias"), False)]
    conv = lambda hf, path: [(f"{hf}.weight", (*path, "kernel"), False), (f"{hf}.bias", (*path, "bias"), False)]
    rows = [
        ("transformer.wte.weight", ("wte", "embedding"), False),
        ("transformer.wpe.weight", ("wpe", "embedding"), False),
        *norm("transformer.h.{i}.ln_1", ("h", "ln_1")),
        *conv("transformer.h.{i}.attn.c_attn", ("h", "attn", "c_attn")),
        *conv("transformer.h.{i}.attn.c_proj", ("h", "attn", "c_proj")),
        *norm("transformer.h.{i}.ln_2", ("h", "ln_2")),
        *conv("transformer.h.{i}.mlp.c_fc", ("h", "mlp", "c_fc")),
        *conv("transformer.h.{i}.mlp.c_proj", ("h", "mlp", "c_proj")),
        *norm("transformer.ln_f", ("ln_f",)),
    ]
    if not c.tie_word_embeddings:
        rows.append(("lm_head.weight", ("lm_head", "kernel"), True))  # nn.Linear
    return rows


def _block(c: ModelConfig):
    act = activation(c.activation)
    H, K = c.n_heads, c.head_dim
    spec = AttentionSpec(scale=1.0 / math.sqrt(K))

    def block(p: dict, h: Float[Array, "B T D"], ctx: LayerInputs):
        B, T, D = h.shape
        qkv = dense(layer_norm(h, p["ln_1"], c.norm_eps), p["attn"]["c_attn"])
        q, k, v = (x.reshape(B, T, H, K) for x in jnp.split(qkv, 3, axis=-1))
        out, new_kv = attend(q, k, v, ctx, spec)
        prompt_kv = lambda prompt: tuple(x.reshape(-1, H, K)
                                         for x in jnp.split(dense(prompt, p["attn"]["c_attn"]), 3, axis=-1)[1:])
        # PEFT's GPT-2 form: the adaption prompt's share added after c_proj, not projected
        h = h + attention_output(out, q, ctx, spec, lambda y: dense(y, p["attn"]["c_proj"]), prompt_kv,
                                 project_adapter=False)
        mlp = p["mlp"]
        h = h + dense(act(dense(layer_norm(h, p["ln_2"], c.norm_eps), mlp["c_fc"])), mlp["c_proj"])
        return h, new_kv

    return block


def transformer(params: dict, inputs: StackInputs, c: ModelConfig, remat: bool = False
                ) -> tuple[Float[Array, "B T D"], KVCache | None]:
    h = inputs.embeds + params["wpe"]["embedding"][inputs.positions].astype(inputs.embeds.dtype)
    h, cache = decoder_stack(_block(c), params["h"], h, inputs, remat)
    return layer_norm(h, params["ln_f"], c.norm_eps), cache


ARCHITECTURE = Architecture(
    model_type="gpt2", config_from_hf=config_from_hf, config_to_hf=config_to_hf, presets=PRESETS,
    param_shapes=param_shapes, key_table=key_table, transformer=transformer,
    tokenizer=TokenizerConventions(add_bos=False, bos_token="<|endoftext|>", eos_token="<|endoftext|>"),
    hf_architecture="GPT2LMHeadModel",
    stack_key="h",
    residual_projections=(("h", "attn", "c_proj", "kernel"), ("h", "mlp", "c_proj", "kernel")),
    optional_prefixes=("transformer.",),  # the original `gpt2` weights have no `transformer.` prefix
    ignored_suffixes=(".attn.bias", ".attn.masked_bias"),
    adaption_prompts=True,
)
