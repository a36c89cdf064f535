"""Hugging Face checkpoints <-> jaxprompt params pytrees.

One table per architecture, rows `(hf_key, pytree_path, transpose)`. The same rows load
(`load_pretrained`) and export (`to_hf_state_dict`). `{i}` in a key is the layer index; the
matching pytree leaf is stacked over layers. Both directions assert full coverage and shapes.
"""

from __future__ import annotations

import json
import os
from typing import Callable

import jax
import jax.numpy as jnp
import ml_dtypes
import numpy as np

from jaxprompt.models.config import ConfigError, ModelConfig
from jaxprompt.models import Model


class CheckpointError(ValueError):
    """A checkpoint that does not match the model it claims to be."""


# ---- the tables ----------------------------------------------------------------------------

_NORM = lambda hf, path: [(f"{hf}.weight", f"{path}/scale", False), (f"{hf}.bias", f"{path}/bias", False)]
_CONV1D = lambda hf, path: [(f"{hf}.weight", f"{path}/kernel", False), (f"{hf}.bias", f"{path}/bias", False)]
_LINEAR = lambda hf, path: [(f"{hf}.weight", f"{path}/kernel", True), (f"{hf}.bias", f"{path}/bias", False)]

# GPT-2's Conv1D stores weights (in, out): no transposes except an untied lm_head (nn.Linear).
GPT2_TABLE = [
    ("transformer.wte.weight", "wte/embedding", False),
    ("transformer.wpe.weight", "wpe/embedding", False),
    *_NORM("transformer.h.{i}.ln_1", "h/ln_1"),
    *_CONV1D("transformer.h.{i}.attn.c_attn", "h/attn/c_attn"),
    *_CONV1D("transformer.h.{i}.attn.c_proj", "h/attn/c_proj"),
    *_NORM("transformer.h.{i}.ln_2", "h/ln_2"),
    *_CONV1D("transformer.h.{i}.mlp.c_fc", "h/mlp/c_fc"),
    *_CONV1D("transformer.h.{i}.mlp.c_proj", "h/mlp/c_proj"),
    *_NORM("transformer.ln_f", "ln_f"),
    ("lm_head.weight", "lm_head/kernel", True),
]

# OPT's nn.Linear stores weights (out, in): every kernel is transposed.
OPT_TABLE = [
    ("model.decoder.embed_tokens.weight", "embed_tokens/embedding", False),
    ("model.decoder.embed_positions.weight", "embed_positions/embedding", False),
    ("model.decoder.project_in.weight", "project_in/kernel", True),
    ("model.decoder.project_out.weight", "project_out/kernel", True),
    *_LINEAR("model.decoder.layers.{i}.self_attn.q_proj", "layers/self_attn/q_proj"),
    *_LINEAR("model.decoder.layers.{i}.self_attn.k_proj", "layers/self_attn/k_proj"),
    *_LINEAR("model.decoder.layers.{i}.self_attn.v_proj", "layers/self_attn/v_proj"),
    *_LINEAR("model.decoder.layers.{i}.self_attn.out_proj", "layers/self_attn/out_proj"),
    *_NORM("model.decoder.layers.{i}.self_attn_layer_norm", "layers/self_attn_layer_norm"),
    *_LINEAR("model.decoder.layers.{i}.fc1", "layers/fc1"),
    *_LINEAR("model.decoder.layers.{i}.fc2", "layers/fc2"),
    *_NORM("model.decoder.layers.{i}.final_layer_norm", "layers/final_layer_norm"),
    *_NORM("model.decoder.final_layer_norm", "final_layer_norm"),
    ("lm_head.weight", "lm_head/kernel", True),
]

TABLES = {"gpt2": GPT2_TABLE, "opt": OPT_TABLE}

# Prefixes a checkpoint may drop (base-model checkpoints such as the original `gpt2` weights),
# and keys that are buffers rather than parameters.
_OPTIONAL_PREFIXES = {"gpt2": ("transformer.",), "opt": ("model.", "model.decoder.")}
_IGNORED_SUFFIXES = (".attn.bias", ".attn.masked_bias")
_HEAD = "lm_head.weight"  # absent from `shapes` when tied; a checkpoint may still carry it


def _rows(config: ModelConfig) -> list[tuple[str, tuple[str, ...], bool]]:
    """The table rows that apply to this config's params pytree (optional modules dropped)."""
    shapes = Model(config).param_shapes()
    rows = []
    for hf, path, transpose in TABLES[config.model_type]:
        path = tuple(path.split("/"))
        node = shapes
        for name in path:
            node = node.get(name) if isinstance(node, dict) else None
        if node is not None:
            rows.append((hf, path, transpose))
    covered = {path for _, path, _ in rows}
    for leaf_path, _ in jax.tree_util.tree_flatten_with_path(shapes)[0]:
        names = tuple(e.key for e in leaf_path)
        if names not in covered:  # a table bug, not a user error
            raise AssertionError(f"conversion table for {config.model_type} does not cover {'/'.join(names)}")
    return rows


def _get(tree: dict, path: tuple[str, ...]):
    for name in path:
        tree = tree[name]
    return tree


def _set(tree: dict, path: tuple[str, ...], value) -> None:
    for name in path[:-1]:
        tree = tree.setdefault(name, {})
    tree[path[-1]] = value


# ---- export ----------------------------------------------------------------------------------


def to_hf_state_dict(config: ModelConfig, params: dict) -> dict[str, np.ndarray]:
    """The HF (`*ForCausalLM`) state dict of a params pytree, as numpy arrays in the params' dtype.

    A tied lm_head is omitted, as `save_pretrained` does.
    """
    expected = Model(config).param_shapes()
    out = {}
    for hf, path, transpose in _rows(config):
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
        np_dtype = ml_dtypes.bfloat16 if jnp.dtype(dtype) == jnp.bfloat16 else np.dtype(dtype)
        state = {k: v.astype(np_dtype) for k, v in state.items()}
    hf_config = config.to_hf_config()
    hf_config["torch_dtype"] = str(jnp.dtype(next(iter(state.values())).dtype))
    tmp = os.path.join(out_dir, "model.safetensors.tmp")
    save_file(state, tmp, metadata={"format": "pt"})
    os.replace(tmp, os.path.join(out_dir, "model.safetensors"))
    with open(os.path.join(out_dir, "config.json"), "w") as f:
        json.dump(hf_config, f, indent=2)


# ---- load ------------------------------------------------------------------------------------

WEIGHT_FILES = ("model.safetensors", "model.safetensors.index.json", "pytorch_model.bin", "pytorch_model.bin.index.json")


class TensorSource:
    """Lazy access to the tensors of a checkpoint directory (safetensors, sharded or not, or .bin)."""

    def __init__(self, directory: str):
        self.directory = directory
        self._readers: dict[str, Callable[[str], np.ndarray]] = {}
        present = [f for f in WEIGHT_FILES if os.path.isfile(os.path.join(directory, f))]
        if not present:
            raise CheckpointError(
                f"{directory} is not a model checkpoint: none of {', '.join(WEIGHT_FILES)} found"
            )
        name = present[0]
        path = os.path.join(directory, name)
        if name.endswith(".index.json"):
            with open(path) as f:
                weight_map = json.load(f)["weight_map"]
            shards = sorted(set(weight_map.values()))
        else:
            shards = [name]
        for shard in shards:
            shard_path = os.path.join(directory, shard)
            if not os.path.isfile(shard_path):
                raise CheckpointError(f"checkpoint shard {shard} listed in {name} is missing from {directory}")
            for key, reader in _open_shard(shard_path).items():
                self._readers[key] = reader

    def keys(self) -> set[str]:
        return set(self._readers)

    def get(self, key: str) -> np.ndarray:
        return self._readers[key](key)


def _open_shard(path: str) -> dict[str, Callable[[str], np.ndarray]]:
    if path.endswith(".safetensors"):
        from safetensors import safe_open

        try:
            handle = safe_open(path, framework="numpy")
            keys = list(handle.keys())
        except Exception as e:  # safetensors raises its own error types for truncated/corrupt headers
            raise CheckpointError(f"corrupt safetensors file {path}: {e}") from e
        return {k: (lambda key, h=handle: h.get_tensor(key)) for k in keys}
    try:
        import torch
    except ImportError as e:
        raise CheckpointError(
            f"{path} is a PyTorch pickle; reading it needs torch (pip install 'jaxprompt[torch]') "
            "or convert the checkpoint to safetensors"
        ) from e
    try:
        state = torch.load(path, map_location="cpu", weights_only=True, mmap=True)
    except Exception as e:
        raise CheckpointError(f"corrupt PyTorch checkpoint {path}: {e}") from e

    def read(key, state=state):
        t = state[key]
        if t.dtype == torch.bfloat16:
            return t.view(torch.int16).numpy().view(ml_dtypes.bfloat16)
        return t.numpy()

    return {k: read for k in state}


def _key_map(config: ModelConfig, source_keys: set[str], rows) -> dict[str, str]:
    """Table key -> the key as this checkpoint spells it (some checkpoints drop the model prefix)."""
    probe = rows[0][0]
    for drop in ("", *_OPTIONAL_PREFIXES[config.model_type]):
        if probe.startswith(drop) and probe[len(drop):] in source_keys:
            break
    else:
        raise CheckpointError(
            f"checkpoint does not look like a {config.model_type} model: no {probe!r} "
            f"(found e.g. {sorted(source_keys)[:3]})"
        )
    strip = lambda k: k[len(drop):] if k.startswith(drop) else k
    return {hf.format(i=i): strip(hf.format(i=i)) for hf, _, _ in rows
            for i in (range(config.n_layers) if "{i}" in hf else [0])}


def load_params(config: ModelConfig, source: TensorSource, dtype=jnp.float32) -> dict:
    """Fills the model's `jax.eval_shape` skeleton from `source`, leaf by leaf, cast to `dtype`.

    Peak host memory is the params in `dtype` plus one stacked leaf, never two fp32 copies.
    """
    dtype = jnp.dtype(dtype)
    np_dtype = ml_dtypes.bfloat16 if dtype == jnp.bfloat16 else np.dtype(dtype)
    rows = _rows(config)
    shapes = jax.eval_shape(lambda: Model(config).init(jax.random.key(0), dtype))
    names = _key_map(config, source.keys(), rows)
    missing = sorted(names[k] for k in names if names[k] not in source.keys())
    tied = config.tie_word_embeddings
    used = set(names.values())
    extra = sorted(k for k in source.keys() - used
                   if not k.endswith(_IGNORED_SUFFIXES) and not (tied and k.endswith(_HEAD)))
    if missing or extra:
        raise CheckpointError(
            f"checkpoint {source.directory} does not match the {config.model_type} config: "
            + (f"missing tensors {missing[:8]}{' ...' if len(missing) > 8 else ''}; " if missing else "")
            + (f"unexpected tensors {extra[:8]}{' ...' if len(extra) > 8 else ''}" if extra else "")
        )
    params: dict = {}
    for hf, path, transpose in rows:
        spec = _get(shapes, path)
        layered = "{i}" in hf
        buf = np.empty(spec.shape, np_dtype)
        for i in range(config.n_layers) if layered else [None]:
            key = names[hf.format(i=i if i is not None else 0)]
            x = source.get(key)
            if transpose:
                x = x.T
            want = spec.shape[1:] if layered else spec.shape
            if x.shape != tuple(want):
                raise CheckpointError(
                    f"tensor {key} has shape {tuple(x.T.shape if transpose else x.shape)}, "
                    f"the {config.model_type} config expects {tuple(want[::-1] if transpose else want)}"
                )
            if layered:
                buf[i] = x.astype(np_dtype)
            else:
                buf[...] = x.astype(np_dtype)
        _set(params, path, jnp.asarray(buf, dtype=dtype))
        del buf
    if tied and _HEAD in source.keys():
        head = source.get(_HEAD)
        emb = _get(params, rows[0][1])
        if head.shape != emb.shape:
            raise CheckpointError(f"tied lm_head.weight has shape {head.shape}, embeddings {emb.shape}")
    return params


def resolve(name_or_path: str, revision: str | None = None) -> str:
    """A local checkpoint directory for a path or a HF model id (cache first, then the hub)."""
    if os.path.isdir(name_or_path):
        if not os.path.isfile(os.path.join(name_or_path, "config.json")):
            raise CheckpointError(f"{name_or_path} is not a model checkpoint: it has no config.json")
        return name_or_path
    if os.path.exists(name_or_path) or name_or_path.startswith((".", "/")):
        raise CheckpointError(f"{name_or_path} is not a checkpoint directory")
    from huggingface_hub import snapshot_download

    patterns = ["config.json", "tokenizer.json", "vocab.json", "merges.txt", "tokenizer_config.json",
                "special_tokens_map.json", "generation_config.json", "*.safetensors", "model.safetensors.index.json"]
    try:
        return snapshot_download(name_or_path, revision=revision, allow_patterns=patterns, local_files_only=True)
    except Exception:
        pass
    try:
        path = snapshot_download(name_or_path, revision=revision, allow_patterns=patterns)
        if not any(os.path.isfile(os.path.join(path, f)) for f in WEIGHT_FILES[:2]):  # old repos: .bin only
            path = snapshot_download(name_or_path, revision=revision,
                                     allow_patterns=patterns + ["pytorch_model.bin*"])
        return path
    except Exception as e:
        raise CheckpointError(
            f"model {name_or_path!r} is not a local directory, not in the Hugging Face cache, and could not be "
            f"downloaded ({type(e).__name__}). On a machine with network access run "
            f"`huggingface-cli download {name_or_path}` (or set HF_HOME to a cache that has it), "
            "or pass a local checkpoint directory."
        ) from e


def load_pretrained(name_or_path: str, dtype=jnp.float32, revision: str | None = None) -> tuple[ModelConfig, dict]:
    """Loads a HF GPT-2 / OPT checkpoint as `(config, frozen params)` in `dtype`."""
    directory = resolve(name_or_path, revision)
    try:
        config = ModelConfig.from_hf_config(directory)
    except ConfigError as e:
        raise ConfigError(f"{directory}: {e}") from e
    return config, load_params(config, TensorSource(directory), dtype)
