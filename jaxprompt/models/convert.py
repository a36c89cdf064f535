"""Hugging Face checkpoints <-> jaxprompt params pytrees.

Each architecture module has one key table, rows `(hf_key, params_path, transpose)`; the same rows
load (`load_pretrained`) and export (`to_hf_state_dict`, `save_pretrained`). `{i}` in a key is the
layer index; the matching params leaf is stacked over layers. Both directions check coverage and
shapes.
"""

from __future__ import annotations

import json
import os

import jax
import jax.numpy as jnp
import ml_dtypes
import numpy as np

from jaxprompt.models.architecture import KeyRow
from jaxprompt.models.model import Model
from jaxprompt.models.model_config import ModelConfig
from jaxprompt.models.registry import architecture, config_to_hf


class CheckpointError(ValueError):
    """A checkpoint that cannot be read or does not match what it claims to hold: a model's weights
    (here) or a run's train state (`jaxprompt.checkpoint`). One class, so callers catch one."""


def key_rows(config: ModelConfig) -> list[KeyRow]:
    """The architecture's key table, checked to cover every params leaf exactly once."""
    rows = architecture(config.model_type).key_table(config)
    leaves = {tuple(e.key for e in path) for path, _ in
              jax.tree_util.tree_flatten_with_path(Model(config).param_shapes())[0]}
    covered = [path for _, path, _ in rows]
    if sorted(covered) != sorted(leaves):  # a table bug, not a user error
        raise AssertionError(f"key table for {config.model_type} does not match its params: "
                             f"uncovered {sorted(leaves - set(covered))}, unknown {sorted(set(covered) - leaves)}")
    return rows


def tied_head_key(config: ModelConfig) -> str | None:
    """The output head's key when untied: a tied checkpoint may still carry it (a copy)."""
    if not config.tie_word_embeddings:
        return None
    untied = architecture(config.model_type).key_table(config.replace(tie_word_embeddings=False))
    tied = {hf for hf, _, _ in architecture(config.model_type).key_table(config)}
    return next((hf for hf, _, _ in untied if hf not in tied), None)


def _get(tree: dict, path: tuple[str, ...]):
    for name in path:
        tree = tree[name]
    return tree


def _np_dtype(dtype) -> np.dtype:
    return np.dtype(ml_dtypes.bfloat16) if jnp.dtype(dtype) == jnp.bfloat16 else np.dtype(dtype)


# ---- export ----------------------------------------------------------------------------------


def to_hf_state_dict(config: ModelConfig, params: dict) -> dict[str, np.ndarray]:
    """The HF (`*ForCausalLM`) state dict of a params pytree, as numpy arrays in the params' dtype.

    A tied output head is omitted, as `save_pretrained` does.
    """
    expected = Model(config).param_shapes()
    out = {}
    for hf, path, transpose in key_rows(config):
        leaf = np.asarray(jax.device_get(_get(params, path)))
        want = _get(expected, path).shape
        if leaf.shape != want:
            raise CheckpointError(f"params leaf {'/'.join(path)} has shape {leaf.shape}, expected {want}")
        per_layer = [(hf.format(i=i), leaf[i]) for i in range(config.n_layers)] if "{i}" in hf else [(hf, leaf)]
        for key, x in per_layer:
            out[key] = np.ascontiguousarray(x.T if transpose else x)
    return out


def save_pretrained(config: ModelConfig, params: dict, out_dir: str, dtype=None) -> None:
    """Writes `config.json` + `model.safetensors`, loadable by `transformers` and by `load_pretrained`."""
    from safetensors.numpy import save_file

    os.makedirs(out_dir, exist_ok=True)
    state = to_hf_state_dict(config, params)
    if dtype is not None:
        state = {k: v.astype(_np_dtype(dtype)) for k, v in state.items()}
    hf_config = config_to_hf(config)
    hf_config["torch_dtype"] = str(jnp.dtype(next(iter(state.values())).dtype))
    tmp = os.path.join(out_dir, f"model.safetensors.tmp{os.getpid()}")
    save_file(state, tmp, metadata={"format": "pt"})
    os.replace(tmp, os.path.join(out_dir, "model.safetensors"))
    tmp = os.path.join(out_dir, f"config.json.tmp{os.getpid()}")
    with open(tmp, "w") as f:
        json.dump(hf_config, f, indent=2)
    os.replace(tmp, os.path.join(out_dir, "config.json"))
