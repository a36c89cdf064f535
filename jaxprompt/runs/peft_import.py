"""A PEFT prompt-learning adapter (prompt tuning, p-tuning, prefix tuning, adaption prompts) as a
jaxprompt run: run.json and a committed checkpoint of the prompt, written as training writes one.
"""
from __future__ import annotations

import dataclasses
import os

import jax
import jax.numpy as jnp
import numpy as np

from jaxprompt.config import MethodConfig, TrainConfig
from jaxprompt.data.tasks import get_task
from jaxprompt.files import read_json_object
from jaxprompt.models import config_from_hf
from jaxprompt.models.loading import resolve
from jaxprompt.models.model_config import ConfigError
from jaxprompt.prompts import AdaptionPrompt, PrefixTuning, PromptMethod, SoftPrompt
from jaxprompt.runs.checkpoint import Checkpointer
from jaxprompt.runs.export import PEFT_ADAPTION_MODULES, ExportError, peft_adaption_incompatibility
from jaxprompt.runs.layout import open_run_dir, run_info, write_run_info
from jaxprompt.settings import one_line


def read_peft_adapter(adapter_dir: str) -> tuple[dict, dict[str, np.ndarray]]:
    """(adapter_config.json, tensors) of a PEFT prompt adapter; a damaged one is one line."""
    from safetensors import SafetensorError
    from safetensors.numpy import load_file

    config_path = os.path.join(adapter_dir, "adapter_config.json")
    weights = os.path.join(adapter_dir, "adapter_model.safetensors")
    if not os.path.isfile(config_path) or not os.path.isfile(weights):
        raise ExportError(f"{adapter_dir} is not a PEFT adapter: need adapter_config.json and adapter_model.safetensors")
    config = read_json_object(config_path, ExportError, "a PEFT adapter config")
    size_key = "adapter_len" if config.get("peft_type") == "ADAPTION_PROMPT" else "num_virtual_tokens"
    P = config.get(size_key)
    if not isinstance(P, int) or isinstance(P, bool) or P < 1:
        raise ExportError(f"{config_path}: {size_key} must be an integer >= 1, got {P!r}")
    try:
        tensors = load_file(weights)
    except (SafetensorError, OSError, ValueError) as e:
        raise ExportError(f"{weights} cannot be read ({one_line(e)})") from None
    return config, {k: np.asarray(v, np.float32) for k, v in tensors.items()}


def prompt_from_peft(config: dict, tensors: dict[str, np.ndarray], c) -> tuple[PromptMethod, dict]:
    """(method, prompt pytree) equivalent to a PEFT prompt-learning adapter, for the model `c`."""
    peft_type = config.get("peft_type")
    if peft_type == "ADAPTION_PROMPT":
        return _adaption_from_peft(config, tensors, c)
    key = next((k for k in tensors if k.endswith("prompt_embeddings")), None)
    if key is None:
        raise ExportError(f"the adapter has no prompt_embeddings tensor (found {sorted(tensors)[:4]})")
    tensor, P = tensors[key], int(config["num_virtual_tokens"])
    if peft_type in ("PROMPT_TUNING", "P_TUNING"):
        if tensor.shape != (P, c.d_embed):
            raise ExportError(f"adapter prompt_embeddings has shape {tensor.shape}; this model needs ({P}, {c.d_embed})")
        return SoftPrompt(length=P), {"embeddings": jnp.asarray(tensor)}
    if peft_type == "PREFIX_TUNING":
        width = c.n_layers * 2 * c.n_kv_heads * c.head_dim
        if config.get("prefix_projection") and tensor.shape[1] != width:
            raise ExportError("adapter holds an unprojected prefix encoder; save it after projection")
        if tensor.shape != (P, width):
            raise ExportError(f"adapter prompt_embeddings has shape {tensor.shape}; this model needs ({P}, {width})")
        kv = tensor.reshape(P, c.n_layers, 2, c.n_kv_heads, c.head_dim).transpose(1, 0, 2, 3, 4)
        return PrefixTuning(length=P), {"kv": jnp.asarray(kv)}
    raise ExportError(f"unsupported PEFT type {peft_type!r}: jaxprompt imports PROMPT_TUNING, P_TUNING, "
                      "PREFIX_TUNING, ADAPTION_PROMPT")


def _adaption_from_peft(config: dict, tensors: dict[str, np.ndarray], c) -> tuple[PromptMethod, dict]:
    reason = peft_adaption_incompatibility(c)
    if reason:
        raise ExportError(reason)
    A, n = int(config["adapter_len"]), config.get("adapter_layers")
    if not isinstance(n, int) or not 1 <= n <= c.n_layers:
        raise ExportError(f"adapter_layers must be in 1..{c.n_layers} for this model, got {n!r}")
    module = "base_model.model." + PEFT_ADAPTION_MODULES[c.model_type]
    prompts, gates = [], []
    for layer in range(c.n_layers - n, c.n_layers):
        name = module.format(i=layer)
        prompt, gate = tensors.get(f"{name}.adaption_prompt"), tensors.get(f"{name}.adaption_gate")
        if prompt is None or gate is None:
            raise ExportError(f"the adapter lacks {name}.adaption_prompt/adaption_gate (found {sorted(tensors)[:4]})")
        if prompt.shape != (1, A, c.d_model) or gate.shape != (1,):
            raise ExportError(f"{name}.adaption_prompt has shape {prompt.shape}; this model needs (1, {A}, {c.d_model})")
        prompts.append(prompt[0])
        gates.append(gate[0])
    return AdaptionPrompt(length=A, top_layers=n), {"prompt": jnp.asarray(np.stack(prompts)),
                                                    "gate": jnp.asarray(np.array(gates, np.float32))}


def import_peft(adapter_dir: str, out_dir: str, task: str = "antonyms", model: str | None = None,
                overwrite: bool = False) -> str:
    """A jaxprompt run directory (run.json + a committed checkpoint of the prompt) holding a PEFT
    adapter's prompt, ready for `jaxprompt eval/generate/inspect/export/serve` (it holds no training
    state, so `train --resume` refuses it).

    An existing run in `out_dir` is refused unless `overwrite` (which replaces it as a whole)."""
    config, tensors = read_peft_adapter(adapter_dir)
    base = model if model is not None else config.get("base_model_name_or_path")
    if not base:
        raise ExportError("the adapter names no base model: pass --model")
    directory = resolve(base)
    try:
        model_config = config_from_hf(directory)
    except ValueError as e:  # ConfigError, or config.json that is not JSON
        raise ConfigError(f"{os.path.join(directory, 'config.json')}: {one_line(e)}") from None
    method, prompt = prompt_from_peft(config, tensors, model_config)
    the_task = get_task(task)
    reason = method.peft_incompatibility(the_task.template)
    if reason:
        raise ExportError(f"a PEFT adapter cannot be imported into task {the_task.name!r}: {reason}")
    train_config = TrainConfig.from_flags(task=(task,), model=directory, method=method.name, steps=1)
    shared = {f.name: getattr(method, f.name) for f in dataclasses.fields(MethodConfig)
              if f.name != "name" and hasattr(method, f.name)}  # the method settings speak the methods' names
    train_config = dataclasses.replace(train_config, method=dataclasses.replace(train_config.method, **shared))
    lock = open_run_dir(out_dir, overwrite=overwrite, flag="import target")
    try:
        info = run_info(train_config, directory, [the_task], 1, method.length, method,
                        imported_from=os.path.abspath(adapter_dir))
        write_run_info(out_dir, info)
        # the prompt as training commits one, without a training state to continue from
        Checkpointer(out_dir).save({"params": jax.tree.map(np.asarray, prompt)}, {"run": info}, step=0)
    finally:
        lock.release()
    return out_dir
