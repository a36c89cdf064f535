"""Trained prompts to PyTorch: PEFT adapters, and a plain tensor export.

PEFT can hold a prompt that is *prepended* to the input (PROMPT_TUNING, P_TUNING), keys/values
in every layer (PREFIX_TUNING, per key/value head), or LLaMA-Adapter's gated prompts in the top
layers of Llama, Mistral and GPT-2 models (ADAPTION_PROMPT). What is exported is the method's
inference form, the form evaluation scores (p-tuning's encoder output, a relaxed prompt at its final
temperature). A prompt inside a template, several prompt slots, a prefix in only the top k layers,
multi-task prompts, or adaption prompts of other families cannot be represented; those get a clear
error and the plain export, which carries the tensors plus a JSON description of where they go.
Importing an adapter back is peft_import.py's.
"""
from __future__ import annotations

import json
import os

import jax
import jax.numpy as jnp
import numpy as np

from jaxprompt.data.templates import PROMPT, Template
from jaxprompt.files import atomic_path, atomic_write
from jaxprompt.models import Model
from jaxprompt.prompts import PromptMethod, method_spec


class ExportError(ValueError):
    """A prompt that the requested format cannot represent, or an adapter that cannot be read."""


# PEFT's ADAPTION_PROMPT wraps these attention modules (peft/tuners/adaption_prompt/config.py lists
# the model types it supports); other families export adaption prompts as plain tensors.
PEFT_ADAPTION_MODULES = {"llama": "model.layers.{i}.self_attn", "mistral": "model.layers.{i}.self_attn",
                         "gpt2": "transformer.h.{i}.attn"}


def peft_adaption_incompatibility(c) -> str | None:
    """Why PEFT's ADAPTION_PROMPT cannot compute an adaption prompt on model `c` as jaxprompt does.

    PEFT's AdaptedAttention passes the adapter's share through `o_proj` on its own, bias included,
    so a Llama/Mistral whose output projection has a bias gets that bias twice in every adapted
    layer: its zero gate departs from the frozen model (0.59 in the logits of a tiny biased Llama,
    tests/test_export.py). jaxprompt adds the bias once (models/layers/attention.py, attention_output)."""
    if c.model_type not in PEFT_ADAPTION_MODULES:
        return f"PEFT's ADAPTION_PROMPT supports {', '.join(PEFT_ADAPTION_MODULES)} models, not {c.model_type}"
    if c.model_type != "gpt2" and c.attention_bias:
        return ("PEFT's ADAPTION_PROMPT adds the attention output projection's bias a second time in every "
                "adapted layer, so on this model (attention_bias) it would compute another function")
    return None


def peft_incompatibility(method: PromptMethod, model: Model, template: Template) -> str | None:
    """Why `method`'s prompt in `template` on `model` cannot be a PEFT adapter, or None if it can."""
    if method.adapts_layers:
        reason = peft_adaption_incompatibility(model.config)
        if reason:
            return reason
    return method.peft_incompatibility(template)


def _serving_tensors(method: PromptMethod, prompt: dict, model: Model, frozen: dict
                     ) -> tuple[PromptMethod, dict, dict[str, np.ndarray]]:
    """(inference method, its prompt, tensors): `virtual_tokens` [N, E], `past_key_values`
    [L, P, 2, G, K] (per key/value head), or `adaption_prompt` [n, A, D] and `adaption_gate` [n]."""
    method, serving = method.inference_prompt(prompt, model, frozen)
    if method.makes_prefix:
        k, v, _ = method.prefix(serving, model, frozen, 0)
        return method, serving, {"past_key_values": np.asarray(jnp.stack([k, v], axis=2), np.float32)}
    if method.adapts_layers:
        return method, serving, {"adaption_prompt": np.asarray(serving["prompt"], np.float32),
                                 "adaption_gate": np.asarray(serving["gate"], np.float32)}
    return method, serving, {"virtual_tokens": np.asarray(method.virtual_tokens(serving, model, frozen, 0), np.float32)}


def _target_dir(out_dir: str) -> None:
    if os.path.exists(out_dir) and not os.path.isdir(out_dir):
        raise ExportError(f"export target {out_dir} is a file, not a directory")
    os.makedirs(out_dir, exist_ok=True)


def export_peft(out_dir: str, method: PromptMethod, prompt: dict, model: Model, frozen: dict, template: Template, *,
                base_model: str, tokenizer: str = "", task: str = "") -> str:
    """Writes `adapter_config.json` + `adapter_model.safetensors` for `peft.PeftModel.from_pretrained`:
    `method`'s `prompt`, trained in `template` on the frozen `model` and its weights, for the base
    model `base_model` (an HF id or a directory: the adapter names it). Refused, naming why, where
    PEFT cannot compute what jaxprompt does (a prompt inside the template, a top-k prefix, ...)."""
    from safetensors.numpy import save_file

    reason = peft_incompatibility(method, model, template)
    if reason:
        raise ExportError(f"cannot export as a PEFT adapter: {reason}. Use `jaxprompt export --to plain` instead.")
    _target_dir(out_dir)
    c = model.config
    trained = method
    method, _, served = _serving_tensors(method, prompt, model, frozen)
    config = {"task_type": "CAUSAL_LM", "base_model_name_or_path": base_model, "inference_mode": True}
    if method.adapts_layers:
        prompts, gates = served["adaption_prompt"], served["adaption_gate"]
        n, A = prompts.shape[:2]
        module = PEFT_ADAPTION_MODULES[c.model_type]
        config.update(adapter_len=A, adapter_layers=n, target_modules=module.rsplit(".", 1)[1], **method.peft_config())
        tensors = {}
        for j, layer in enumerate(range(c.n_layers - n, c.n_layers)):  # PEFT adapts the top n layers
            name = "base_model.model." + module.format(i=layer)
            tensors[f"{name}.adaption_prompt"] = prompts[j][None]
            tensors[f"{name}.adaption_gate"] = gates[j][None]
    else:
        config.update(num_transformer_submodules=1, num_layers=c.n_layers, inference_mode=True)
        if method.makes_prefix:
            # [L, P, 2, G, K] -> [P, L * 2 * G * K]: PEFT's past_key_values layout, per key/value head
            # (PEFT sizes a prefix by num_key_value_heads x head_dim under grouped-query attention)
            kv = served["past_key_values"]
            P = kv.shape[1]
            flat = kv.transpose(1, 0, 2, 3, 4).reshape(P, -1)
            config.update(num_virtual_tokens=P, token_dim=c.n_kv_heads * c.head_dim, num_attention_heads=c.n_kv_heads,
                          **method.peft_config())
        else:
            flat = served["virtual_tokens"]
            P = flat.shape[0]
            # the trained method names the type (p-tuning's encoder baked into embeddings stays P_TUNING)
            config.update(num_virtual_tokens=P, token_dim=c.d_embed, num_attention_heads=c.n_heads,
                          **trained.peft_config())
        tensors = {"prompt_embeddings": flat}
    arrays = {k: np.ascontiguousarray(v) for k, v in tensors.items()}
    atomic_write(os.path.join(out_dir, "adapter_model.safetensors"), lambda tmp: save_file(arrays, tmp))
    atomic_write(os.path.join(out_dir, "adapter_config.json"), json.dumps(config, indent=2))
    _write_description(out_dir, trained, template, base_model, tokenizer, task, peft_type=config["peft_type"])
    return out_dir


def export_plain(out_dir: str, method: PromptMethod, prompt: dict, model: Model, frozen: dict, template: Template, *,
                 base_model: str, tokenizer: str = "", task: str = "") -> str:
    """Prompt tensors as `prompt.safetensors` (+ `prompt.pt` when torch is installed) and `prompt.json`.

    `virtual_tokens` [N, E] (embedding methods: row i goes where the template's slot index is i),
    `past_key_values` [L, P, 2, G, K] (prefix tuning, per key/value head), or `adaption_prompt`
    [n, A, D] + `adaption_gate` [n] (the top n layers), plus every leaf of the trained prompt pytree.
    """
    from safetensors.numpy import save_file

    _target_dir(out_dir)
    _, _, tensors = _serving_tensors(method, prompt, model, frozen)
    name = ", ".join(tensors)
    for path, leaf in jax.tree_util.tree_flatten_with_path(prompt)[0]:
        tensors["prompt/" + "/".join(str(getattr(p, "key", p)) for p in path)] = np.asarray(leaf, np.float32)
    arrays = {k: np.ascontiguousarray(v) for k, v in tensors.items()}
    atomic_write(os.path.join(out_dir, "prompt.safetensors"), lambda tmp: save_file(arrays, tmp))
    try:
        import torch  # optional: the PyTorch side is an extra
    except ImportError:
        torch = None
    if torch is not None:
        with atomic_path(os.path.join(out_dir, "prompt.pt")) as tmp:
            torch.save({k: torch.from_numpy(np.array(v, copy=True)) for k, v in tensors.items()}, tmp)
    _write_description(out_dir, method, template, base_model, tokenizer, task, tensor=name)
    return out_dir


def _layout(method: PromptMethod) -> str:
    if method.makes_prefix:
        return "keys/values per key/value head attended before the input; real tokens' positions start at P"
    if method.adapts_layers:
        return ("per top layer: the layer's queries attend to its k/v projections of adaption_prompt in a separate "
                "softmax, times adaption_gate, projected by the output projection and added (LLaMA-Adapter); no "
                "token positions")
    return "virtual_tokens[i] replaces the i-th {prompt} position; positions count virtual tokens"


def _write_description(out_dir: str, method: PromptMethod, t: Template, base_model: str, tokenizer: str, task: str,
                       **extra) -> None:
    description = {
        "method": method.name,
        "method_options": {k: v for k, v in method_spec(method).items() if k != "name"},
        "template": t.text, "target": t.target, "task": task,
        "prompt_placeholder": "{" + PROMPT + "}",
        "n_virtual": t.n_virtual(method.length) if method.takes_positions else 0,
        "model": base_model,
        "tokenizer": tokenizer,
        "layout": _layout(method),
        **extra,
    }
    atomic_write(os.path.join(out_dir, "prompt.json"), json.dumps(description, indent=2))
