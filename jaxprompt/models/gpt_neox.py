"""GPT-NeoX / Pythia (Black et al. 2022; Biderman et al. 2023): LayerNorm blocks whose attention
and MLP read the same input (parallel residual), rotary positions on the first quarter of each head
(`rotary_pct`), a fused q/k/v projection laid out per head, and an untied output head.
"""

from __future__ import annotations

import math
from typing import Any, Mapping

from jaxtyping import Array, Float

from jaxprompt.models import llama
from jaxprompt.models.architecture import Architecture, KeyRow, TokenizerConventions
from jaxprompt.models.layers.attention import AttentionSpec, KVCache, LayerInputs, attend, attention_output
from jaxprompt.models.layers.basic import activation, dense, layer_norm
from jaxprompt.models.layers.rotary import apply_rotary
from jaxprompt.models.layers.stack import StackInputs
from jaxprompt.models.model_config import ModelConfig, read_fields, rope_from_hf, rope_to_hf, write_fields

HF_FIELDS = {
    "vocab_size": "vocab_size", "max_positions": "max_position_embeddings", "d_model": "hidden_size",
    "n_layers": "num_hidden_layers", "n_heads": "num_attention_heads", "d_ff": "intermediate_size",
    "activation": "hidden_act", "norm_eps": "layer_norm_eps", "attention_bias": "attention_bias",
    "parallel_residual": "use_parallel_residual", "tie_word_embeddings": "tie_word_embeddings",
    "bos_token_id": "bos_token_id", "eos_token_id": "eos_token_id", "pad_token_id": "pad_token_id",
}
HF_DEFAULTS = {
    "vocab_size": 50432, "hidden_size": 6144, "num_hidden_layers": 44, "num_attention_heads": 64,
    "intermediate_size": 24576, "hidden_act": "gelu", "max_position_embeddings": 2048, "layer_norm_eps": 1e-5,
    "attention_bias": True, "use_parallel_residual": True, "tie_word_embeddings": False, "bos_token_id": 0,
    "eos_token_id": 2,
}


def _pythia(hidden: int, layers: int, heads: int, vocab: int = 50304) -> dict[str, Any]:
    return {"model_type": "gpt_neox", "hidden_size": hidden, "intermediate_size": 4 * hidden,
            "num_hidden_layers": layers, "num_attention_heads": heads, "max_position_embeddings": 2048,
            "rotary_pct": 0.25, "rotary_emb_base": 10000, "use_parallel_residual": True, "vocab_size": vocab,
            "layer_norm_eps": 1e-5, "hidden_act": "gelu", "bos_token_id": 0, "eos_token_id": 0,
            "tie_word_embeddings": False}


PRESETS: dict[str, dict[str, Any]] = {
    "EleutherAI/pythia-70m": _pythia(512, 6, 8),
    "EleutherAI/pythia-160m": _pythia(768, 12, 12),
    "EleutherAI/pythia-410m": _pythia(1024, 24, 16),
    "EleutherAI/pythia-1.4b": _pythia(2048, 24, 16),
    "EleutherAI/pythia-6.9b": _pythia(4096, 32, 32, vocab=50432),  # its embedding is padded further
}


def config_from_hf(hf: Mapping[str, Any]) -> ModelConfig:
    fields = read_fields(hf, HF_FIELDS, HF_DEFAULTS)
    params = hf.get("rope_parameters") or {}
    theta, scaling = rope_from_hf({**hf, "rope_theta": hf.get("rotary_emb_base", params.get("rope_theta", 10000))},
                                  10000.0)
    pct = hf.get("rotary_pct", params.get("partial_rotary_factor", 0.25))
    return ModelConfig(model_type="gpt_neox", rope_theta=theta, rope_scaling=scaling, rotary_pct=float(pct), **fields)


def config_to_hf(c: ModelConfig) -> dict[str, Any]:
    rope = rope_to_hf(c)
    return {"model_type": "gpt_neox", "architectures": ["GPTNeoXForCausalLM"], **write_fields(c, HF_FIELDS),
            "rotary_pct": c.rotary_pct, "rotary_emb_base": rope["rope_theta"], "rope_scaling": rope["rope_scaling"]}


def param_shapes(c: ModelConfig) -> dict:
    L, D, F, V = c.n_layers, c.d_model, c.d_ff, c.vocab_size
    norm = lambda *lead: {"scale": (*lead, D), "bias": (*lead, D)}
    linear = lambda i, o, bias=True: {"kernel": (L, i, o), **({"bias": (L, o)} if bias else {})}
    shapes = {
        "embed_in": {"embedding": (V, D)},
        "layers": {
            "input_layernorm": norm(L),
            "post_attention_layernorm": norm(L),
            "attention": {"query_key_value": linear(D, 3 * D, c.attention_bias),
                          "dense": linear(D, D, c.attention_bias)},
            "mlp": {"dense_h_to_4h": linear(D, F), "dense_4h_to_h": linear(F, D)},
        },
        "final_layer_norm": norm(),
    }
    if not c.tie_word_embeddings:
        shapes["embed_out"] = {"kernel": (D, V)}
    return shapes


def key_table(c: ModelConfig) -> list[KeyRow]:
    layer = "gpt_neox.layers.{i}"
    norm = lambda hf, path: [(f"{hf}.weight", (*path, "scale"), False), (f"{hf}.bias", (*path, "bias"), False)]
    rows = [
        ("gpt_neox.embed_in.weight", ("embed_in", "embedding"), False),
        *norm(f"{layer}.input_layernorm", ("layers", "input_layernorm")),
        *norm(f"{layer}.post_attention_layernorm", ("layers", "post_attention_layernorm")),
        *llama.linear_rows(f"{layer}.attention.query_key_value", ("layers", "attention", "query_key_value"),
                           c.attention_bias),
        *llama.linear_rows(f"{layer}.attention.dense", ("layers", "attention", "dense"), c.attention_bias),
        *llama.linear_rows(f"{layer}.mlp.dense_h_to_4h", ("layers", "mlp", "dense_h_to_4h"), True),
        *llama.linear_rows(f"{layer}.mlp.dense_4h_to_h", ("layers", "mlp", "dense_4h_to_h"), True),
        *norm("gpt_neox.final_layer_norm", ("final_layer_norm",)),
    ]
    if not c.tie_word_embeddings:
        rows.append(("embed_out.weight", ("embed_out", "kernel"), True))
    return rows


def _block(c: ModelConfig):
    act = activation(c.activation)
    H, K = c.n_heads, c.head_dim
    spec = AttentionSpec(scale=1.0 / math.sqrt(K))

    def block(p: dict, h: Float[Array, "B T D"], ctx: LayerInputs):
        B, T, D = h.shape
        attn = p["attention"]
        qkv = dense(layer_norm(h, p["input_layernorm"], c.norm_eps), attn["query_key_value"])
        qkv = qkv.reshape(B, T, H, 3, K)  # per head [q | k | v], the layout of the fused weight
        cos, sin = ctx.rotary
        q, k = apply_rotary(qkv[:, :, :, 0], cos, sin), apply_rotary(qkv[:, :, :, 1], cos, sin)
        out, new_kv = attend(q, k, qkv[:, :, :, 2], ctx, spec)

        def prompt_kv(prompt):
            akv = dense(prompt, attn["query_key_value"]).reshape(-1, H, 3, K)
            return akv[:, :, 1], akv[:, :, 2]

        out = attention_output(out, q, ctx, spec, lambda y: dense(y, attn["dense"]), prompt_kv)
        mlp = lambda x: dense(act(dense(layer_norm(x, p["post_attention_layernorm"], c.norm_eps),
                                        p["mlp"]["dense_h_to_4h"])), p["mlp"]["dense_4h_to_h"])
        if c.parallel_residual:
            return h + out + mlp(h), new_kv
        h = h + out
        return h + mlp(h), new_kv

    return block


def transformer(params: dict, inputs: StackInputs, c: ModelConfig, remat: bool = False
                ) -> tuple[Float[Array, "B T D"], KVCache | None]:
    h, cache = llama.rotary_stack(_block(c), params, inputs, c, remat)
    return layer_norm(h, params["final_layer_norm"], c.norm_eps), cache


ARCHITECTURE = Architecture(
    model_type="gpt_neox", config_from_hf=config_from_hf, config_to_hf=config_to_hf, presets=PRESETS,
    param_shapes=param_shapes, key_table=key_table, transformer=transformer,
    tokenizer=TokenizerConventions(add_bos=False, bos_token="<|endoftext|>", eos_token="<|endoftext|>"),
    hf_architecture="GPTNeoXForCausalLM",
    optional_prefixes=("gpt_neox.",),
    ignored_suffixes=(".attention.bias", ".attention.masked_bias", ".attention.rotary_emb.inv_freq"),
    # transformers 5 names the head `lm_head`; published Pythia checkpoints (and our exports) `embed_out`
    key_aliases={"lm_head.weight": "embed_out.weight"},
    adaption_prompts=True,
)
