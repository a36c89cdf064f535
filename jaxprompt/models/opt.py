"""OPT (Zhang et al. 2022): GPT-2's design with separate q/k/v projections, ReLU, and fairseq legacies.

What differs from GPT-2: learned positions offset by 2 (fairseq reserves the table's first rows),
pre- or post-LayerNorm (opt-350m is post-LN without a final norm), `project_in`/`project_out` when
the token-embedding width (word_embed_proj_dim) differs from the model width, optional
non-affine norms and bias-free linears. Kernels are stored (in, out), the transpose of PyTorch's
nn.Linear weight.
"""

from __future__ import annotations

import math
from typing import Any, Mapping

from jaxtyping import Array, Float

from jaxprompt.models.architecture import Architecture, KeyRow, TokenizerConventions
from jaxprompt.models.layers.attention import AttentionSpec, KVCache, LayerInputs, attend, attention_output
from jaxprompt.models.layers.basic import activation, dense, layer_norm
from jaxprompt.models.layers.stack import StackInputs, decoder_stack
from jaxprompt.models.model_config import ModelConfig, read_fields, write_fields

POSITION_OFFSET = 2

HF_FIELDS = {
    "vocab_size": "vocab_size", "max_positions": "max_position_embeddings", "d_model": "hidden_size",
    "n_layers": "num_hidden_layers", "n_heads": "num_attention_heads", "d_ff": "ffn_dim",
    "d_embed": "word_embed_proj_dim", "activation": "activation_function", "pre_layer_norm": "do_layer_norm_before",
    "layer_norm_affine": "layer_norm_elementwise_affine", "use_bias": "enable_bias",
    "tie_word_embeddings": "tie_word_embeddings", "bos_token_id": "bos_token_id", "eos_token_id": "eos_token_id",
    "pad_token_id": "pad_token_id",
}
HF_DEFAULTS = {
    "vocab_size": 50272, "max_position_embeddings": 2048, "hidden_size": 768, "num_hidden_layers": 12,
    "num_attention_heads": 12, "ffn_dim": 3072, "activation_function": "relu", "do_layer_norm_before": True,
    "layer_norm_elementwise_affine": True, "enable_bias": True, "tie_word_embeddings": True, "pad_token_id": 1,
    "bos_token_id": 2, "eos_token_id": 2,
}

PRESETS: dict[str, dict[str, Any]] = {
    "facebook/opt-125m": {"model_type": "opt", "hidden_size": 768, "num_hidden_layers": 12,
                          "num_attention_heads": 12, "ffn_dim": 3072},
    "facebook/opt-350m": {"model_type": "opt", "hidden_size": 1024, "num_hidden_layers": 24,
                          "num_attention_heads": 16, "ffn_dim": 4096, "word_embed_proj_dim": 512,
                          "do_layer_norm_before": False},
    "facebook/opt-1.3b": {"model_type": "opt", "hidden_size": 2048, "num_hidden_layers": 24,
                          "num_attention_heads": 32, "ffn_dim": 8192},
    "facebook/opt-2.7b": {"model_type": "opt", "hidden_size": 2560, "num_hidden_layers": 32,
                          "num_attention_heads": 32, "ffn_dim": 10240},
    "facebook/opt-6.7b": {"model_type": "opt", "hidden_size": 4096, "num_hidden_layers": 32,
                          "num_attention_heads": 32, "ffn_dim": 16384},
}


def config_from_hf(hf: Mapping[str, Any]) -> ModelConfig:
    fields = read_fields(hf, HF_FIELDS, HF_DEFAULTS)
    # post-LN OPT (opt-350m) has no final norm; `_remove_final_layer_norm` drops it from pre-LN ones
    fields["final_layer_norm"] = bool(fields["pre_layer_norm"]) and not hf.get("_remove_final_layer_norm", False)
    return ModelConfig(model_type="opt", **fields)


def config_to_hf(c: ModelConfig) -> dict[str, Any]:
    return {"model_type": "opt", "architectures": ["OPTForCausalLM"], **write_fields(c, HF_FIELDS),
            "_remove_final_layer_norm": c.pre_layer_norm and not c.final_layer_norm}


def param_shapes(c: ModelConfig) -> dict:
    L, D, F, E, V = c.n_layers, c.d_model, c.d_ff, c.d_embed, c.vocab_size
    norm = lambda *lead: {"scale": (*lead, D), "bias": (*lead, D)} if c.layer_norm_affine else {}
    linear = lambda i, o: {"kernel": (L, i, o), "bias": (L, o)} if c.use_bias else {"kernel": (L, i, o)}
    shapes = {
        "embed_tokens": {"embedding": (V, E)},
        "embed_positions": {"embedding": (c.max_positions + POSITION_OFFSET, D)},
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


def key_table(c: ModelConfig) -> list[KeyRow]:
    def norm(hf, path):
        if not c.layer_norm_affine:
            return []
        return [(f"{hf}.weight", (*path, "scale"), False), (f"{hf}.bias", (*path, "bias"), False)]

    def linear(hf, path):
        rows = [(f"{hf}.weight", (*path, "kernel"), True)]
        return rows + [(f"{hf}.bias", (*path, "bias"), False)] if c.use_bias else rows

    layer = "model.decoder.layers.{i}"
    rows = [
        ("model.decoder.embed_tokens.weight", ("embed_tokens", "embedding"), False),
        ("model.decoder.embed_positions.weight", ("embed_positions", "embedding"), False),
        *[row for name in ("q_proj", "k_proj", "v_proj", "out_proj")
          for row in linear(f"{layer}.self_attn.{name}", ("layers", "self_attn", name))],
        *norm(f"{layer}.self_attn_layer_norm", ("layers", "self_attn_layer_norm")),
        *linear(f"{layer}.fc1", ("layers", "fc1")),
        *linear(f"{layer}.fc2", ("layers", "fc2")),
        *norm(f"{layer}.final_layer_norm", ("layers", "final_layer_norm")),
    ]
    if c.has_projection:
        rows += [("model.decoder.project_in.weight", ("project_in", "kernel"), True),
                 ("model.decoder.project_out.weight", ("project_out", "kernel"), True)]
    if c.final_layer_norm:
        rows += norm("model.decoder.final_layer_norm", ("final_layer_norm",))
    if not c.tie_word_embeddings:
        rows.append(("lm_head.weight", ("lm_head", "kernel"), True))
    return rows


def _block(c: ModelConfig):
    act = activation(c.activation)
    H, K = c.n_heads, c.head_dim
    spec = AttentionSpec(scale=1.0 / math.sqrt(K))
    norm = lambda x, p: layer_norm(x, p or None, c.norm_eps)  # {} when the norms are not affine

    def block(p: dict, h: Float[Array, "B T D"], ctx: LayerInputs):
        B, T, D = h.shape
        attn = p["self_attn"]
        x = norm(h, p["self_attn_layer_norm"]) if c.pre_layer_norm else h
        q, k, v = (dense(x, attn[name]).reshape(B, T, H, K) for name in ("q_proj", "k_proj", "v_proj"))
        out, new_kv = attend(q, k, v, ctx, spec)
        prompt_kv = lambda prompt: tuple(dense(prompt, attn[name]).reshape(-1, H, K) for name in ("k_proj", "v_proj"))
        h = h + attention_output(out, q, ctx, spec, lambda y: dense(y, attn["out_proj"]), prompt_kv)
        if not c.pre_layer_norm:
            h = norm(h, p["self_attn_layer_norm"])
        x = norm(h, p["final_layer_norm"]) if c.pre_layer_norm else h
        h = h + dense(act(dense(x, p["fc1"])), p["fc2"])
        if not c.pre_layer_norm:
            h = norm(h, p["final_layer_norm"])
        return h, new_kv

    return block


def transformer(params: dict, inputs: StackInputs, c: ModelConfig, remat: bool = False
                ) -> tuple[Float[Array, "B T E"], KVCache | None]:
    h = inputs.embeds
    if c.has_projection:
        h = h @ params["project_in"]["kernel"]
    h = h + params["embed_positions"]["embedding"][inputs.positions + POSITION_OFFSET].astype(h.dtype)
    h, cache = decoder_stack(_block(c), params["layers"], h, inputs, remat)
    if c.final_layer_norm:
        h = layer_norm(h, params.get("final_layer_norm") or None, c.norm_eps)
    if c.has_projection:
        h = h @ params["project_out"]["kernel"]
    return h, cache


ARCHITECTURE = Architecture(
    model_type="opt", config_from_hf=config_from_hf, config_to_hf=config_to_hf, presets=PRESETS,
    param_shapes=param_shapes, key_table=key_table, transformer=transformer,
    # OPT's tokenizer starts every text with </s> (its BOS)
    tokenizer=TokenizerConventions(add_bos=True, bos_token="</s>", eos_token="</s>"),
    hf_architecture="OPTForCausalLM",
    optional_prefixes=("model.", "model.decoder."),
    adaption_prompts=True,
)
