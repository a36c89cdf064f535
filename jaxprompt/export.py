"""Trained prompts to PyTorch and back: PEFT adapters, and a plain tensor export.

PEFT can hold a prompt that is *prepended* to the input (PROMPT_TUNING, P_TUNING) or keys/values
in every layer (PREFIX_TUNING). A prompt inside a template, several prompt slots, a prefix in only
the top k layers, or multi-task prompts cannot be represented; those get a clear error and the
plain export, which carries the tensors plus a JSON description of where they go.
"""

from __future__ import annotations

import dataclasses
import json
import os

import jax
import jax.numpy as jnp
import numpy as np

from jaxprompt.data import PROMPT
from jaxprompt.prompts import MultiTask, PrefixTuning, PromptMethod, SoftPrompt
from jaxprompt.session import Session

FINAL_STEP = 2**30  # schedules (relaxed prompts' temperature) at their end


class ExportError(ValueError):
    """A prompt that the requested format cannot represent."""


def peft_incompatibility(session: Session) -> str | None:
    """Why this run's prompt cannot be a PEFT adapter, or None if it can."""
    method, template = session.method, session.task.template
    if isinstance(method, MultiTask):
        return "multi-task prompts have no PEFT equivalent"
    if method.kind == "prefix":
        if method.top_layers is not None:
            return (f"a prefix in only the top {method.top_layers} layers cannot be written as PEFT PREFIX_TUNING, "
                    "which puts keys/values in every layer")
        return None
    pieces = template.pieces({f: "" for f in template.fields}, session.prompt_length)
    slots = [p for p in pieces if isinstance(p, int)]
    if len(slots) != 1 or not isinstance(pieces[0], int):
        return (f"the prompt sits inside the template {template.text!r}; PEFT prompt tuning can only prepend "
                "virtual tokens to the whole input")
    return None


def _serving_tensors(session: Session, prompt: dict) -> tuple[PromptMethod, dict, np.ndarray]:
    """(serving method, serving prompt, tensor): virtual tokens [N, E] or keys/values [L, P, 2, H, K]."""
    method, serving = session.method.inference_prompt(prompt, session.model, session.frozen, FINAL_STEP)
    if method.kind == "prefix":
        k, v, _ = method.prefix(serving, session.model, session.frozen, FINAL_STEP)
        return method, serving, np.asarray(jnp.stack([k, v], axis=2), np.float32)
    tokens = method.virtual_tokens(serving, session.model, session.frozen, FINAL_STEP)
    return method, serving, np.asarray(tokens, np.float32)


def export_peft(session: Session, prompt: dict, out_dir: str, base_model: str = "") -> str:
    """Writes `adapter_config.json` + `adapter_model.safetensors` for `peft.PeftModel.from_pretrained`."""
    from safetensors.numpy import save_file

    reason = peft_incompatibility(session)
    if reason:
        raise ExportError(f"cannot export as a PEFT adapter: {reason}. Use `jaxprompt export --to plain` instead.")
    c = session.config
    method, _, tensor = _serving_tensors(session, prompt)
    P = tensor.shape[1] if method.kind == "prefix" else tensor.shape[0]
    config = {
        "task_type": "CAUSAL_LM",
        "num_virtual_tokens": P,
        "num_transformer_submodules": 1,
        "num_attention_heads": c.n_heads,
        "num_layers": c.n_layers,
        "base_model_name_or_path": base_model or session.model_id,
        "inference_mode": True,
    }
    if method.kind == "prefix":
        # [L, P, 2, H, K] -> [P, L * 2 * D], PEFT's past_key_values layout
        flat = tensor.transpose(1, 0, 2, 3, 4).reshape(P, c.n_layers * 2 * c.d_model)
        config.update(peft_type="PREFIX_TUNING", token_dim=c.d_model, prefix_projection=False)
        tensors = {"prompt_embeddings": flat}
    elif session.method.name == "ptuning":
        config.update(peft_type="P_TUNING", token_dim=c.d_embed, encoder_reparameterization_type="MLP",
                      encoder_hidden_size=session.method.hidden)
        tensors = {"prompt_embeddings": tensor}
    else:
        config.update(peft_type="PROMPT_TUNING", token_dim=c.d_embed, prompt_tuning_init="RANDOM")
        tensors = {"prompt_embeddings": tensor}
    os.makedirs(out_dir, exist_ok=True)
    save_file({k: np.ascontiguousarray(v) for k, v in tensors.items()}, os.path.join(out_dir, "adapter_model.safetensors"))
    with open(os.path.join(out_dir, "adapter_config.json"), "w") as f:
        json.dump(config, f, indent=2)
    _write_description(session, out_dir, base_model, peft_type=config["peft_type"])
    return out_dir


def export_plain(session: Session, prompt: dict, out_dir: str, base_model: str = "") -> str:
    """Prompt tensors as `prompt.safetensors` (+ `prompt.pt` when torch is installed) and `prompt.json`.

    `virtual_tokens` [N, E] (embedding methods: row i goes where the template's slot index is i) or
    `past_key_values` [L, P, 2, H, K] (prefix tuning), plus every leaf of the trained prompt pytree.
    """
    from safetensors.numpy import save_file

    method, serving, tensor = _serving_tensors(session, prompt)
    name = "past_key_values" if method.kind == "prefix" else "virtual_tokens"
    tensors = {name: tensor}
    for path, leaf in jax.tree_util.tree_flatten_with_path(prompt)[0]:
        tensors["prompt/" + "/".join(str(getattr(p, "key", p)) for p in path)] = np.asarray(leaf, np.float32)
    os.makedirs(out_dir, exist_ok=True)
    save_file({k: np.ascontiguousarray(v) for k, v in tensors.items()}, os.path.join(out_dir, "prompt.safetensors"))
    try:
        import torch

        torch.save({k: torch.from_numpy(np.array(v, copy=True)) for k, v in tensors.items()},
                   os.path.join(out_dir, "prompt.pt"))
    except ImportError:
        pass
    _write_description(session, out_dir, base_model, tensor=name)
    return out_dir


def _write_description(session: Session, out_dir: str, base_model: str, **extra) -> None:
    t = session.task.template
    description = {
        "method": session.method.name,
        "method_options": {k: (list(v) if isinstance(v, tuple) else v)
                           for k, v in dataclasses.asdict(session.method).items()},
        "template": t.text, "target": t.target, "task": session.task.name,
        "prompt_placeholder": "{" + PROMPT + "}",
        "n_virtual": session.n_virtual,
        "model": base_model or session.model_id,
        "tokenizer": session.tokenizer.name,
        "layout": ("keys/values attended before the input; real tokens' positions start at P"
                   if session.method.kind == "prefix" else
                   "virtual_tokens[i] replaces the i-th {prompt} position; positions count virtual tokens"),
        **extra,
    }
    with open(os.path.join(out_dir, "prompt.json"), "w") as f:
        json.dump(description, f, indent=2)


def read_peft_adapter(adapter_dir: str) -> tuple[dict, np.ndarray]:
    from safetensors.numpy import load_file

    config_path = os.path.join(adapter_dir, "adapter_config.json")
    weights = os.path.join(adapter_dir, "adapter_model.safetensors")
    if not os.path.isfile(config_path) or not os.path.isfile(weights):
        raise ExportError(f"{adapter_dir} is not a PEFT adapter: need adapter_config.json and adapter_model.safetensors")
    with open(config_path) as f:
        config = json.load(f)
    tensors = load_file(weights)
    key = next((k for k in tensors if k.endswith("prompt_embeddings")), None)
    if key is None:
        raise ExportError(f"{weights} has no prompt_embeddings tensor (found {sorted(tensors)[:4]})")
    return config, np.asarray(tensors[key], np.float32)


def prompt_from_peft(config: dict, tensor: np.ndarray, session_config) -> tuple[PromptMethod, dict]:
    """(method, prompt pytree) equivalent to a PEFT prompt-learning adapter."""
    c = session_config
    peft_type, P = config.get("peft_type"), int(config["num_virtual_tokens"])
    if peft_type in ("PROMPT_TUNING", "P_TUNING"):
        if tensor.shape != (P, c.d_embed):
            raise ExportError(f"adapter prompt_embeddings has shape {tensor.shape}; this model needs ({P}, {c.d_embed})")
        return SoftPrompt(length=P), {"embeddings": jnp.asarray(tensor)}
    if peft_type == "PREFIX_TUNING":
        if config.get("prefix_projection") and tensor.shape[1] != c.n_layers * 2 * c.d_model:
            raise ExportError("adapter holds an unprojected prefix encoder; save it after projection")
        if tensor.shape != (P, c.n_layers * 2 * c.d_model):
            raise ExportError(f"adapter prompt_embeddings has shape {tensor.shape}; this model needs "
                              f"({P}, {c.n_layers * 2 * c.d_model})")
        kv = tensor.reshape(P, c.n_layers, 2, c.n_heads, c.head_dim).transpose(1, 0, 2, 3, 4)
        return PrefixTuning(length=P), {"kv": jnp.asarray(kv)}
    raise ExportError(f"unsupported PEFT type {peft_type!r}: jaxprompt imports PROMPT_TUNING, P_TUNING, PREFIX_TUNING")


def import_peft(adapter_dir: str, out_dir: str, task: str = "antonyms", model: str | None = None) -> str:
    """A jaxprompt run directory (run.json + Orbax state) holding a PEFT adapter's prompt, ready for
    `jaxprompt eval/generate/inspect` or further training with `train --resume --out`."""
    from jaxprompt.checkpoint import Checkpointer, write_run_info
    from jaxprompt.models import config_from_hf
    from jaxprompt.models.convert import resolve
    from jaxprompt.optim import make_optimizer
    from jaxprompt.run import TrainConfig, _method_fields, _task_spec, optimizer_config
    from jaxprompt.tasks import get_task
    from jaxprompt.train import TrainState

    config, tensor = read_peft_adapter(adapter_dir)
    base = model or config.get("base_model_name_or_path")
    if not base:
        raise ExportError("the adapter names no base model: pass --model")
    directory = resolve(base)
    model_config = config_from_hf(directory)
    method, prompt = prompt_from_peft(config, tensor, model_config)
    train_config = TrainConfig(task=task, model=directory, method=method.name, prompt_length=method.length,
                               steps=1, progress=False)
    info = {"config": dataclasses.asdict(train_config), "model_dir": os.path.abspath(directory),
            "task": _task_spec(get_task(task)), "steps": 1, "n_virtual": method.length,
            "method": {"name": method.name, **_method_fields(method)}, "imported_from": os.path.abspath(adapter_dir)}
    write_run_info(out_dir, info)
    optimizer = make_optimizer(optimizer_config(train_config, 1), prompt)
    ckpt = Checkpointer(out_dir)
    try:
        ckpt.save(TrainState.create(prompt, optimizer, jax.random.PRNGKey(0)), {"run": info})
    finally:
        ckpt.close()
    return out_dir
