"""Llama 2 / 3 / 3.1 / 3.2 (Touvron et al. 2023; Grattafiori et al. 2024): RMSNorm, SwiGLU, rotary
positions with optional scaling, grouped-query attention.

The same decoder serves the families built on it: `make_architecture` takes a `Variant` (q/k/v
biases, per-head q/k norms, Gemma's norms and scaled embeddings), so mistral.py, qwen2.py,
qwen3.py and gemma.py hold only what is theirs (config map, presets, tokenizer conventions).
Kernels are stored (in, out), the transpose of PyTorch's nn.Linear weight.
"""

from __future__ import annotations

import functools
import math
from typing import Any, Callable, Mapping, NamedTuple

import jax.numpy as jnp
import numpy as np
from jaxtyping import Array, Float, Int

from jaxprompt.models.architecture import Architecture, KeyRow, TokenizerConventions
from jaxprompt.models.layers.attention import AttentionSpec, KVCache, LayerInputs, attend, attention_output
from jaxprompt.models.layers.basic import activation, dense, gated_mlp, rms_norm
from jaxprompt.models.layers.bits import from_bits
from jaxprompt.models.layers.rotary import apply_rotary, rotary_angles, rotary_inv_freq
from jaxprompt.models.layers.stack import StackInputs, decoder_stack
from jaxprompt.models.model_config import ModelConfig, read_fields, refuse, rope_from_hf, rope_to_hf, write_fields


class Variant(NamedTuple):
    """How a Llama-style family departs from Llama."""

    qkv_bias: bool | None = None  # None: config.attention_bias (Qwen2: always)
    out_bias: bool | None = None  # None: config.attention_bias (Qwen2: never)
    qk_norm: bool = False  # Qwen3: RMSNorm over each head's queries and keys before the rotary
    gemma_norms: bool = False  # Gemma: norm weight w acts as (1 + w), multiplied in fp32
    scaled_embeddings: bool = False  # Gemma: token embeddings times sqrt(d_model)


LLAMA = Variant()

# ours -> config.json name (rotary and window settings are read by `config_from_hf`)
HF_FIELDS = {
    "vocab_size": "vocab_size", "max_positions": "max_position_embeddings", "d_model": "hidden_size",
    "n_layers": "num_hidden_layers", "n_heads": "num_attention_heads", "n_kv_heads": "num_key_value_heads",
    "head_dim": "head_dim", "d_ff": "intermediate_size", "activation": "hidden_act", "norm_eps": "rms_norm_eps",
    "attention_bias": "attention_bias", "mlp_bias": "mlp_bias", "tie_word_embeddings": "tie_word_embeddings",
    "bos_token_id": "bos_token_id", "eos_token_id": "eos_token_id", "pad_token_id": "pad_token_id",
}
HF_DEFAULTS = {
    "vocab_size": 32000, "hidden_size": 4096, "intermediate_size": 11008, "num_hidden_layers": 32,
    "num_attention_heads": 32, "hidden_act": "silu", "max_position_embeddings": 2048, "rms_norm_eps": 1e-6,
    "attention_bias": False, "mlp_bias": False, "tie_word_embeddings": False, "bos_token_id": 1, "eos_token_id": 2,
}
UNSUPPORTED = {"pretraining_tp": 1}

_LLAMA3_SCALING = {"rope_type": "llama3", "low_freq_factor": 1.0, "high_freq_factor": 4.0,
                   "original_max_position_embeddings": 8192}
PRESETS: dict[str, dict[str, Any]] = {
    "meta-llama/Llama-2-7b-hf": {
        "model_type": "llama", "hidden_size": 4096, "intermediate_size": 11008, "num_hidden_layers": 32,
        "num_attention_heads": 32, "num_key_value_heads": 32, "max_position_embeddings": 4096, "rms_norm_eps": 1e-5,
        "vocab_size": 32000, "bos_token_id": 1, "eos_token_id": 2, "tie_word_embeddings": False},
    "meta-llama/Llama-3.2-1B": {
        "model_type": "llama", "hidden_size": 2048, "intermediate_size": 8192, "num_hidden_layers": 16,
        "num_attention_heads": 32, "num_key_value_heads": 8, "head_dim": 64, "max_position_embeddings": 131072,
        "rms_norm_eps": 1e-5, "rope_theta": 500000.0, "rope_scaling": {**_LLAMA3_SCALING, "factor": 32.0},
        "vocab_size": 128256, "bos_token_id": 128000, "eos_token_id": 128001, "tie_word_embeddings": True},
    "meta-llama/Llama-3.2-3B": {
        "model_type": "llama", "hidden_size": 3072, "intermediate_size": 8192, "num_hidden_layers": 28,
        "num_attention_heads": 24, "num_key_value_heads": 8, "head_dim": 128, "max_position_embeddings": 131072,
        "rms_norm_eps": 1e-5, "rope_theta": 500000.0, "rope_scaling": {**_LLAMA3_SCALING, "factor": 32.0},
        "vocab_size": 128256, "bos_token_id": 128000, "eos_token_id": 128001, "tie_word_embeddings": True},
    "meta-llama/Llama-3.1-8B": {
        "model_type": "llama", "hidden_size": 4096, "intermediate_size": 14336, "num_hidden_layers": 32,
        "num_attention_heads": 32, "num_key_value_heads": 8, "max_position_embeddings": 131072,
        "rms_norm_eps": 1e-5, "rope_theta": 500000.0, "rope_scaling": {**_LLAMA3_SCALING, "factor": 8.0},
        "vocab_size": 128256, "bos_token_id": 128000, "eos_token_id": 128001, "tie_word_embeddings": False},
}


def read_config(hf: Mapping[str, Any], model_type: str, fields: Mapping[str, str], defaults: Mapping[str, Any],
                default_theta: float = 10000.0, **extra) -> ModelConfig:
    """A ModelConfig from a Llama-style config.json: the field table plus the rotary settings."""
    values = read_fields(hf, fields, defaults)
    theta, scaling = rope_from_hf(hf, default_theta)
    return ModelConfig(model_type=model_type, rope_theta=theta, rope_scaling=scaling, **{**values, **extra})


def write_config(c: ModelConfig, fields: Mapping[str, str], hf_architecture: str) -> dict[str, Any]:
    return {"model_type": c.model_type, "architectures": [hf_architecture], **write_fields(c, fields),
            **rope_to_hf(c)}


def config_from_hf(hf: Mapping[str, Any]) -> ModelConfig:
    refuse(hf, "Llama", UNSUPPORTED)
    return read_config(hf, "llama", HF_FIELDS, HF_DEFAULTS)


def config_to_hf(c: ModelConfig) -> dict[str, Any]:
    return write_config(c, HF_FIELDS, "LlamaForCausalLM")


# ---- parameters --------------------------------------------------------------------------------

def _bias(flag: bool | None, c: ModelConfig) -> bool:
    return c.attention_bias if flag is None else flag


def param_shapes(c: ModelConfig, v: Variant = LLAMA) -> dict:
    L, D, F, V, H, G, K = c.n_layers, c.d_model, c.d_ff, c.vocab_size, c.n_heads, c.n_kv_heads, c.head_dim
    linear = lambda i, o, bias: {"kernel": (L, i, o), **({"bias": (L, o)} if bias else {})}
    attn = {"q_proj": linear(D, H * K, _bias(v.qkv_bias, c)), "k_proj": linear(D, G * K, _bias(v.qkv_bias, c)),
            "v_proj": linear(D, G * K, _bias(v.qkv_bias, c)), "o_proj": linear(H * K, D, _bias(v.out_bias, c))}
    if v.qk_norm:
        attn |= {"q_norm": {"scale": (L, K)}, "k_norm": {"scale": (L, K)}}
    shapes = {
        "embed_tokens": {"embedding": (V, D)},
        "layers": {
            "input_layernorm": {"scale": (L, D)},
            "self_attn": attn,
            "post_attention_layernorm": {"scale": (L, D)},
            "mlp": {"gate_proj": linear(D, F, c.mlp_bias), "up_proj": linear(D, F, c.mlp_bias),
                    "down_proj": linear(F, D, c.mlp_bias)},
        },
        "norm": {"scale": (D,)},
    }
    if not c.tie_word_embeddings:
        shapes["lm_head"] = {"kernel": (D, V)}
    return shapes


def linear_rows(hf: str, path: tuple[str, ...], bias: bool) -> list[KeyRow]:
    rows = [(f"{hf}.weight", (*path, "kernel"), True)]
    return rows + [(f"{hf}.bias", (*path, "bias"), False)] if bias else rows


def norm_row(hf: str, path: tuple[str, ...]) -> KeyRow:
    return (f"{hf}.weight", (*path, "scale"), False)


def key_table(c: ModelConfig, v: Variant = LLAMA) -> list[KeyRow]:
    layer = "model.layers.{i}"
    attn = ("layers", "self_attn")
    rows = [
        ("model.embed_tokens.weight", ("embed_tokens", "embedding"), False),
        norm_row(f"{layer}.input_layernorm", ("layers", "input_layernorm")),
        *linear_rows(f"{layer}.self_attn.q_proj", (*attn, "q_proj"), _bias(v.qkv_bias, c)),
        *linear_rows(f"{layer}.self_attn.k_proj", (*attn, "k_proj"), _bias(v.qkv_bias, c)),
        *linear_rows(f"{layer}.self_attn.v_proj", (*attn, "v_proj"), _bias(v.qkv_bias, c)),
        *linear_rows(f"{layer}.self_attn.o_proj", (*attn, "o_proj"), _bias(v.out_bias, c)),
        norm_row(f"{layer}.post_attention_layernorm", ("layers", "post_attention_layernorm")),
        *[row for name in ("gate_proj", "up_proj", "down_proj")
          for row in linear_rows(f"{layer}.mlp.{name}", ("layers", "mlp", name), c.mlp_bias)],
        norm_row("model.norm", ("norm",)),
    ]
    if v.qk_norm:
        rows += [norm_row(f"{layer}.self_attn.q_norm", (*attn, "q_norm")),
                 norm_row(f"{layer}.self_attn.k_norm", (*attn, "k_norm"))]
    if not c.tie_word_embeddings:
        rows.append(("lm_head.weight", ("lm_head", "kernel"), True))
    return rows


# ---- the data flow ---------------------------------------------------------------------------------

def embed_scale(c: ModelConfig, v: Variant, dtype) -> Array | None:
    """Gemma multiplies token embeddings by sqrt(d_model), rounded to the weights' dtype as
    transformers does (inside its embedding module, so prompts inserted after `embed` are not scaled,
    exactly as PEFT's virtual tokens are not)."""
    return jnp.asarray(math.sqrt(c.d_model), dtype) if v.scaled_embeddings else None


def embed(params: dict, tokens: Int[Array, "B T"], c: ModelConfig, v: Variant = LLAMA) -> Float[Array, "B T D"]:
    rows = from_bits(params["embed_tokens"]["embedding"][tokens])  # gathered, then read (`Architecture.embed_tokens`)
    scale = embed_scale(c, v, rows.dtype)
    return rows if scale is None else rows * scale


def embedding_table(params: dict, c: ModelConfig, v: Variant = LLAMA) -> Float[Array, "V D"]:
    table = from_bits(params["embed_tokens"]["embedding"])
    scale = embed_scale(c, v, table.dtype)
    return table if scale is None else table * scale


@functools.lru_cache(maxsize=None)
def inv_freq(c: ModelConfig) -> np.ndarray:
    return rotary_inv_freq(c.rotary_dim, c.rope_theta, c.rope_scaling_dict)


def norm_fn(c: ModelConfig, v: Variant) -> Callable[[Array, Array], Array]:
    return lambda x, scale: rms_norm(x, scale, c.norm_eps, unit_offset=v.gemma_norms)


def attention(p: dict, x: Float[Array, "B T D"], ctx: LayerInputs, c: ModelConfig, v: Variant, spec: AttentionSpec
              ) -> tuple[Float[Array, "B T D"], tuple[Array, Array] | None]:
    """q/k/v projections, (q/k norms), rotary, attention, output projection; plus the adaption
    prompt's share (PEFT's AdaptedAttention: keys/values of the prompt without rotary)."""
    B, T, _ = x.shape
    H, G, K = c.n_heads, c.n_kv_heads, c.head_dim
    norm = norm_fn(c, v)
    keys = lambda y: norm(y, p["k_norm"]["scale"]) if v.qk_norm else y
    q = dense(x, p["q_proj"]).reshape(B, T, H, K)
    k = keys(dense(x, p["k_proj"]).reshape(B, T, G, K))
    val = dense(x, p["v_proj"]).reshape(B, T, G, K)
    if v.qk_norm:
        q = norm(q, p["q_norm"]["scale"])
    cos, sin = ctx.rotary
    q, k = apply_rotary(q, cos, sin), apply_rotary(k, cos, sin)
    out, new_kv = attend(q, k, val, ctx, spec)
    prompt_kv = lambda prompt: (keys(dense(prompt, p["k_proj"]).reshape(-1, G, K)),
                                dense(prompt, p["v_proj"]).reshape(-1, G, K))
    return attention_output(out, q, ctx, spec, lambda y: dense(y, p["o_proj"]), prompt_kv), new_kv


def attention_spec(c: ModelConfig) -> AttentionSpec:
    scalar = c.query_pre_attn_scalar if c.query_pre_attn_scalar is not None else c.head_dim
    return AttentionSpec(scale=scalar**-0.5, softcap=c.attn_softcap)


def _block(c: ModelConfig, v: Variant):
    act, norm, spec = activation(c.activation), norm_fn(c, v), attention_spec(c)

    def block(p: dict, h: Float[Array, "B T D"], ctx: LayerInputs):
        out, new_kv = attention(p["self_attn"], norm(h, p["input_layernorm"]["scale"]), ctx, c, v, spec)
        h = h + out
        h = h + gated_mlp(norm(h, p["post_attention_layernorm"]["scale"]), p["mlp"], act)
        return h, new_kv

    return block


def rotary_stack(block, params: dict, inputs: StackInputs, c: ModelConfig, remat: bool
                 ) -> tuple[Float[Array, "B T D"], KVCache | None]:
    """The scanned layers of a rotary model: angles computed once for the current tokens."""
    rotary = rotary_angles(inputs.positions, inv_freq(c), inputs.embeds.dtype)
    return decoder_stack(block, params["layers"], inputs.embeds, inputs, remat, rotary=rotary,
                         window=c.sliding_window, windowed_layers=c.windowed_layers)


def make_transformer(v: Variant, block_fn=_block):
    def transformer(params: dict, inputs: StackInputs, c: ModelConfig, remat: bool = False
                    ) -> tuple[Float[Array, "B T D"], KVCache | None]:
        h, cache = rotary_stack(block_fn(c, v), params, inputs, c, remat)
        return norm_fn(c, v)(h, params["norm"]["scale"]), cache

    return transformer


def make_architecture(model_type: str, v: Variant, *, config_from_hf, config_to_hf, presets, tokenizer,
                      hf_architecture: str, param_shapes_fn=None, key_table_fn=None, transformer=None
                      ) -> Architecture:
    """An Architecture for a Llama-style family (the functions closed over its `Variant`)."""
    return Architecture(
        model_type=model_type, config_from_hf=config_from_hf, config_to_hf=config_to_hf, presets=presets,
        param_shapes=param_shapes_fn or functools.partial(param_shapes, v=v),
        key_table=key_table_fn or functools.partial(key_table, v=v),
        # the embed trio comes from the key table, unless the embeddings are scaled (Gemma)
        embed=functools.partial(embed, v=v) if v.scaled_embeddings else None,
        embedding_table=functools.partial(embedding_table, v=v) if v.scaled_embeddings else None,
        transformer=transformer or make_transformer(v), tokenizer=tokenizer,
        hf_architecture=hf_architecture, unit_offset_norms=v.gemma_norms, optional_prefixes=("model.",),
        ignored_suffixes=(".rotary_emb.inv_freq",), adaption_prompts=True,
    )


ARCHITECTURE = make_architecture(
    "llama", LLAMA, config_from_hf=config_from_hf, config_to_hf=config_to_hf, presets=PRESETS,
    # Llama 2 (<s>) and Llama 3 (<|begin_of_text|>) tokenizers start every text with BOS
    tokenizer=TokenizerConventions(add_bos=True), hf_architecture="LlamaForCausalLM",
)
