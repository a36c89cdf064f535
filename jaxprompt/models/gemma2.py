"""Gemma 2 (Gemma Team 2024b): Gemma with a norm after attention and after the MLP as well as
before each, attention logits soft-capped at 50 and final logits at 30 (`cap * tanh(x / cap)`),
attention scaled by `query_pre_attn_scalar ** -0.5`, and sliding-window (4096) layers alternating
with global ones (layer 0 windowed).
"""

from __future__ import annotations

from typing import Any, Mapping

from jaxtyping import Array, Float

from jaxprompt.models import gemma, llama
from jaxprompt.models.architecture import KeyRow
from jaxprompt.models.layers.attention import LayerInputs
from jaxprompt.models.layers.basic import activation, gated_mlp
from jaxprompt.models.model_config import ModelConfig

HF_FIELDS = {**{k: v for k, v in gemma.HF_FIELDS.items() if k != "activation"},
             "activation": "hidden_activation", "query_pre_attn_scalar": "query_pre_attn_scalar",
             "attn_softcap": "attn_logit_softcapping", "final_softcap": "final_logit_softcapping"}
HF_DEFAULTS = {**gemma.HF_DEFAULTS, "hidden_size": 2304, "intermediate_size": 9216, "num_hidden_layers": 26,
               "num_attention_heads": 8, "num_key_value_heads": 4, "hidden_activation": "gelu_pytorch_tanh",
               "query_pre_attn_scalar": 256, "attn_logit_softcapping": 50.0, "final_logit_softcapping": 30.0}

PRESETS: dict[str, dict[str, Any]] = {
    "google/gemma-2-2b": {
        "model_type": "gemma2", "hidden_size": 2304, "intermediate_size": 9216, "num_hidden_layers": 26,
        "num_attention_heads": 8, "num_key_value_heads": 4, "head_dim": 256, "hidden_activation": "gelu_pytorch_tanh",
        "max_position_embeddings": 8192, "rms_norm_eps": 1e-6, "rope_theta": 10000.0, "query_pre_attn_scalar": 256,
        "sliding_window": 4096, "attn_logit_softcapping": 50.0, "final_logit_softcapping": 30.0,
        "vocab_size": 256000, "bos_token_id": 2, "eos_token_id": 1, "pad_token_id": 0},
    "google/gemma-2-9b": {
        "model_type": "gemma2", "hidden_size": 3584, "intermediate_size": 14336, "num_hidden_layers": 42,
        "num_attention_heads": 16, "num_key_value_heads": 8, "head_dim": 256, "hidden_activation": "gelu_pytorch_tanh",
        "max_position_embeddings": 8192, "rms_norm_eps": 1e-6, "rope_theta": 10000.0, "query_pre_attn_scalar": 256,
        "sliding_window": 4096, "attn_logit_softcapping": 50.0, "final_logit_softcapping": 30.0,
        "vocab_size": 256000, "bos_token_id": 2, "eos_token_id": 1, "pad_token_id": 0},
}


def config_from_hf(hf: Mapping[str, Any]) -> ModelConfig:
    n_layers = hf.get("num_hidden_layers", HF_DEFAULTS["num_hidden_layers"])
    types = hf.get("layer_types") or ["sliding_attention" if (i + 1) % 2 else "full_attention" for i in range(n_layers)]
    window = hf.get("sliding_window", 4096)
    return llama.read_config(hf, "gemma2", HF_FIELDS, HF_DEFAULTS, sliding_window=window,
                             windowed_layers=None if window is None else tuple(t == "sliding_attention" for t in types))


def config_to_hf(c: ModelConfig) -> dict[str, Any]:
    layer_types = ["sliding_attention" if w else "full_attention" for w in (c.windowed_layers or (False,) * c.n_layers)]
    return {**llama.write_config(c, HF_FIELDS, "Gemma2ForCausalLM"), "sliding_window": c.sliding_window,
            "layer_types": layer_types}


NORMS = ("input_layernorm", "post_attention_layernorm", "pre_feedforward_layernorm", "post_feedforward_layernorm")


def param_shapes(c: ModelConfig) -> dict:
    shapes = llama.param_shapes(c, gemma.GEMMA)
    shapes["layers"] |= {name: {"scale": (c.n_layers, c.d_model)} for name in NORMS}
    return shapes


def key_table(c: ModelConfig) -> list[KeyRow]:
    rows = llama.key_table(c, gemma.GEMMA)
    extra = [llama.norm_row(f"model.layers.{{i}}.{name}", ("layers", name)) for name in NORMS[2:]]
    return rows + extra


def _block(c: ModelConfig, v: llama.Variant):
    act, norm, spec = activation(c.activation), llama.norm_fn(c, v), llama.attention_spec(c)

    def block(p: dict, h: Float[Array, "B T D"], ctx: LayerInputs):
        out, new_kv = llama.attention(p["self_attn"], norm(h, p["input_layernorm"]["scale"]), ctx, c, v, spec)
        h = h + norm(out, p["post_attention_layernorm"]["scale"])
        mlp = gated_mlp(norm(h, p["pre_feedforward_layernorm"]["scale"]), p["mlp"], act)
        return h + norm(mlp, p["post_feedforward_layernorm"]["scale"]), new_kv

    return block


ARCHITECTURE = llama.make_architecture(
    "gemma2", gemma.GEMMA, config_from_hf=config_from_hf, config_to_hf=config_to_hf, presets=PRESETS,
    tokenizer=gemma.ARCHITECTURE.tokenizer, hf_architecture="Gemma2ForCausalLM",
    param_shapes_fn=param_shapes, key_table_fn=key_table, transformer=llama.make_transformer(gemma.GEMMA, _block),
)
