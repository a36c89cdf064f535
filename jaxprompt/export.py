"""Trained prompts to PyTorch and back: PEFT adapters, and a plain tensor export.

PEFT can hold a prompt that is *prepended* to the input (PROMPT_TUNING, P_TUNING) or keys/values
in every layer (PREFIX_TUNING). What is exported is the method's inference form, the form
evaluation scores (p-tuning's encoder output, a relaxed prompt at its final temperature). A prompt
inside a template, several prompt slots, a prefix in only the top k layers, or multi-task prompts
cannot be represented; those get a clear error and the plain export, which carries the tensors
plus a JSON description of where they go.
"""

from __future__ import annotations

import json
import os

import jax
import jax.numpy as jnp
import numpy as np

from jaxprompt.checkpoint import Checkpointer
from jaxprompt.config import TrainConfig, one_line
from jaxprompt.data import PROMPT
from jaxprompt.files import atomic_path, atomic_write
from jaxprompt.models import config_from_hf
from jaxprompt.models.config import ConfigError
from jaxprompt.models.convert import resolve
from jaxprompt.optim import make_optimizer
from jaxprompt.prompts import PrefixTuning, PromptMethod, SoftPrompt, method_spec
from jaxprompt.run import open_run_dir, run_info, write_run_info
from jaxprompt.session import Session
from jaxprompt.tasks import get_task
from jaxprompt.train import TrainState


class ExportError(ValueError):
    """A prompt that the requested format cannot represent, or an adapter that cannot be read."""


def peft_incompatibility(session: Session) -> str | None:
    """Why this run's prompt cannot be a PEFT adapter, or None if it can."""
    return session.method.peft_incompatibility(session.task.template)


def _serving_tensors(session: Session, prompt: dict) -> tuple[PromptMethod, dict, np.ndarray]:
    """(inference method, its prompt, tensor): virtual tokens [N, E] or keys/values [L, P, 2, H, K]."""
    method, serving = session.method.inference_prompt(prompt, session.model, session.frozen)
    if method.kind == "prefix":
        k, v, _ = method.prefix(serving, session.model, session.frozen, 0)
        return method, serving, np.asarray(jnp.stack([k, v], axis=2), np.float32)
    tokens = method.virtual_tokens(serving, session.model, session.frozen, 0)
    return method, serving, np.asarray(tokens, np.float32)


def _target_dir(out_dir: str) -> None:
    if os.path.exists(out_dir) and not os.path.isdir(out_dir):
        raise ExportError(f"export target {out_dir} is a file, not a directory")
    os.makedirs(out_dir, exist_ok=True)


def export_peft(session: Session, prompt: dict, out_dir: str, base_model: str = "") -> str:
    """Writes `adapter_config.json` + `adapter_model.safetensors` for `peft.PeftModel.from_pretrained`."""
    from safetensors.numpy import save_file

    reason = peft_incompatibility(session)
    if reason:
        raise ExportError(f"cannot export as a PEFT adapter: {reason}. Use `jaxprompt export --to plain` instead.")
    _target_dir(out_dir)
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
    arrays = {k: np.ascontiguousarray(v) for k, v in tensors.items()}
    atomic_write(os.path.join(out_dir, "adapter_model.safetensors"), lambda tmp: save_file(arrays, tmp))
    atomic_write(os.path.join(out_dir, "adapter_config.json"), json.dumps(config, indent=2))
    _write_description(session, out_dir, base_model, peft_type=config["peft_type"])
    return out_dir


def export_plain(session: Session, prompt: dict, out_dir: str, base_model: str = "") -> str:
    """Prompt tensors as `prompt.safetensors` (+ `prompt.pt` when torch is installed) and `prompt.json`.

    `virtual_tokens` [N, E] (embedding methods: row i goes where the template's slot index is i) or
    `past_key_values` [L, P, 2, H, K] (prefix tuning), plus every leaf of the trained prompt pytree.
    """
    from safetensors.numpy import save_file

    _target_dir(out_dir)
    method, _, tensor = _serving_tensors(session, prompt)
    name = "past_key_values" if method.kind == "prefix" else "virtual_tokens"
    tensors = {name: tensor}
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
    _write_description(session, out_dir, base_model, tensor=name)
    return out_dir


def _write_description(session: Session, out_dir: str, base_model: str, **extra) -> None:
    t = session.task.template
    description = {
        "method": session.method.name,
        "method_options": {k: v for k, v in method_spec(session.method).items() if k != "name"},
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
    atomic_write(os.path.join(out_dir, "prompt.json"), json.dumps(description, indent=2))


def read_peft_adapter(adapter_dir: str) -> tuple[dict, np.ndarray]:
    """(adapter_config.json, prompt_embeddings) of a PEFT prompt adapter; a damaged one is one line."""
    from safetensors import SafetensorError
    from safetensors.numpy import load_file

    config_path = os.path.join(adapter_dir, "adapter_config.json")
    weights = os.path.join(adapter_dir, "adapter_model.safetensors")
    if not os.path.isfile(config_path) or not os.path.isfile(weights):
        raise ExportError(f"{adapter_dir} is not a PEFT adapter: need adapter_config.json and adapter_model.safetensors")
    try:
        with open(config_path) as f:
            config = json.load(f)
    except (OSError, ValueError) as e:
        raise ExportError(f"{config_path} cannot be read ({one_line(e)})") from None
    if not isinstance(config, dict):
        raise ExportError(f"{config_path} is not a PEFT adapter config (a JSON object)")
    P = config.get("num_virtual_tokens")
    if not isinstance(P, int) or isinstance(P, bool) or P < 1:
        raise ExportError(f"{config_path}: num_virtual_tokens must be an integer >= 1, got {P!r}")
    try:
        tensors = load_file(weights)
    except (SafetensorError, OSError, ValueError) as e:
        raise ExportError(f"{weights} cannot be read ({one_line(e)})") from None
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


def import_peft(adapter_dir: str, out_dir: str, task: str = "antonyms", model: str | None = None,
                overwrite: bool = False) -> str:
    """A jaxprompt run directory (run.json + Orbax state) holding a PEFT adapter's prompt, ready for
    `jaxprompt eval/generate/inspect` or further training with `train --resume --out`.

    An existing run in `out_dir` is refused unless `overwrite` (which replaces it as a whole)."""
    config, tensor = read_peft_adapter(adapter_dir)
    base = model if model is not None else config.get("base_model_name_or_path")
    if not base:
        raise ExportError("the adapter names no base model: pass --model")
    directory = resolve(base)
    try:
        model_config = config_from_hf(directory)
    except ValueError as e:  # ConfigError, or config.json that is not JSON
        raise ConfigError(f"{os.path.join(directory, 'config.json')}: {one_line(e)}") from None
    method, prompt = prompt_from_peft(config, tensor, model_config)
    the_task = get_task(task)
    reason = method.peft_incompatibility(the_task.template)
    if reason:
        raise ExportError(f"a PEFT adapter cannot be imported into task {the_task.name!r}: {reason}")
    train_config = TrainConfig.from_flags(task=(task,), model=directory, method=method.name,
                                          prompt_length=method.length, steps=1)
    lock = open_run_dir(out_dir, overwrite=overwrite, flag="import target")
    try:
        info = run_info(train_config, directory, [the_task], 1, method.length, method,
                        imported_from=os.path.abspath(adapter_dir))
        write_run_info(out_dir, info)
        optimizer = make_optimizer(train_config.optimizer, prompt, total_steps=1)
        Checkpointer(out_dir).save(TrainState.create(prompt, optimizer, jax.random.PRNGKey(0)), {"run": info})
    finally:
        lock.release()
    return out_dir
