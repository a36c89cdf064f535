"""Hugging Face checkpoints -> jaxprompt params pytrees.

A checkpoint is a local directory, the HF cache or the hub (`resolve`): safetensors (sharded or
not) or `pytorch_model.bin`. `CheckpointReader` reads each tensor through the architecture's key
table (`convert.key_rows`), transposes `[out, in]` kernels in cache-sized tiles, casts to the
target dtype and places it straight into its shards (`shardings`): each process reads only the
slices its own devices hold. Nothing is loaded whole. With `quantize`, the layer stack's kernels
are quantized as they are read, one layer at a time (quantize.py).
"""
from __future__ import annotations

import json
import os
from concurrent.futures import ThreadPoolExecutor
from typing import Callable

import jax
import jax.numpy as jnp
import ml_dtypes
import numpy as np

from jaxprompt.models import host_memory
from jaxprompt.models.architecture import KeyRow
from jaxprompt.models.convert import CheckpointError, _get, _np_dtype, key_rows, tied_head_key
from jaxprompt.models.layers.quantized import is_quantized
from jaxprompt.models.model import Model
from jaxprompt.models.model_config import ConfigError, ModelConfig, as_dict
from jaxprompt.models.quantize import Scheme, load_quantized, quantized_shapes, scheme_of
from jaxprompt.models.registry import architecture, config_from_hf

# ---- load ------------------------------------------------------------------------------------

WEIGHT_FILES = ("model.safetensors", "model.safetensors.index.json", "pytorch_model.bin", "pytorch_model.bin.index.json")


class TensorSource:
    """Lazy access to the tensors of a checkpoint directory (safetensors, sharded or not, or .bin).

    Shapes come from the file headers; safetensors slices are read from disk directly
    (`get_slice`), so a shard of a large tensor costs only its own bytes.
    """

    def __init__(self, directory: str):
        self.directory = directory
        self._tensors: dict[str, _Tensor] = {}
        present = [f for f in WEIGHT_FILES if os.path.isfile(os.path.join(directory, f))]
        if not present:
            raise CheckpointError(
                f"{directory} is not a model checkpoint: none of {', '.join(WEIGHT_FILES)} found"
            )
        name = present[0]
        path = os.path.join(directory, name)
        if name.endswith(".index.json"):
            try:
                with open(path) as f:
                    shards = sorted(set(json.load(f)["weight_map"].values()))
            except (OSError, ValueError, KeyError, TypeError, AttributeError) as e:
                raise CheckpointError(f"unreadable checkpoint index {path}: {type(e).__name__}: {e}") from e
        else:
            shards = [name]
        for shard in shards:
            shard_path = os.path.join(directory, shard)
            if not os.path.isfile(shard_path):
                raise CheckpointError(f"checkpoint shard {shard} listed in {name} is missing from {directory}")
            self._tensors.update(_open_shard(shard_path))

    def keys(self) -> set[str]:
        return set(self._tensors)

    def shape(self, key: str) -> tuple[int, ...]:
        return self._tensors[key].shape

    def get(self, key: str, index: tuple[slice, ...] | None = None) -> np.ndarray:
        """The tensor, or the part selected by `index` (slices in the file's layout)."""
        return self._tensors[key].read(index)


class _Tensor:
    def __init__(self, shape: tuple[int, ...], read: Callable[[tuple | None], np.ndarray]):
        self.shape, self.read = shape, read


_SAFETENSORS_DTYPES = {"BF16": ml_dtypes.bfloat16, "F16": np.float16, "F32": np.float32, "F64": np.float64,
                       "I8": np.int8, "U8": np.uint8, "I16": np.int16, "I32": np.int32, "I64": np.int64,
                       "BOOL": np.bool_}


def _safetensors_header(path: str) -> dict:
    """Tensor name -> (dtype, shape, absolute byte offset) for the dtypes numpy can hold; {} if unreadable
    (safe_open, which checked the file, then reads everything)."""
    try:
        with open(path, "rb") as f:
            size = int.from_bytes(f.read(8), "little")
            entries = json.loads(f.read(size))
    except (OSError, ValueError):
        return {}
    return {k: (np.dtype(_SAFETENSORS_DTYPES[v["dtype"]]), tuple(v["shape"]), 8 + size + v["data_offsets"][0])
            for k, v in entries.items() if k != "__metadata__" and v.get("dtype") in _SAFETENSORS_DTYPES}


def _read_whole(path: str, header: dict, key: str) -> np.ndarray:
    """One tensor read with plain file I/O into a fresh array: no memory map, so the file's pages
    never count towards this process's memory (a mapped shard stays resident until it is closed)."""
    dtype, shape, offset = header[key]
    out = np.empty(shape, dtype)
    view = memoryview(out.reshape(-1).view(np.uint8))
    with open(path, "rb", buffering=0) as f:
        f.seek(offset)
        done = 0
        while done < len(view):
            n = f.readinto(view[done:])
            if not n:
                raise CheckpointError(f"corrupt safetensors file {path}: tensor {key} is truncated")
            done += n
    return out


def _open_shard(path: str) -> dict[str, _Tensor]:
    if path.endswith(".safetensors"):
        from safetensors import safe_open

        try:
            handle = safe_open(path, framework="numpy")
            shapes = {k: tuple(handle.get_slice(k).get_shape()) for k in handle.keys()}
        except Exception as e:  # safetensors raises its own error types for truncated/corrupt headers
            raise CheckpointError(f"corrupt safetensors file {path}: {e}") from e

        header = _safetensors_header(path)

        def reader(key):
            def read(index):
                try:
                    if index is None and key in header:
                        return _read_whole(path, header, key)
                    return handle.get_tensor(key) if index is None else handle.get_slice(key)[index]
                except CheckpointError:
                    raise
                except Exception as e:
                    raise CheckpointError(f"corrupt safetensors file {path}: tensor {key}: {e}") from e
            return read

        return {k: _Tensor(shape, reader(k)) for k, shape in shapes.items()}
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

    def torch_reader(t):
        def read(index):
            part = t if index is None else t[index]
            if part.dtype == torch.bfloat16:
                return part.contiguous().view(torch.int16).numpy().view(ml_dtypes.bfloat16)
            return part.numpy()
        return read

    return {k: _Tensor(tuple(t.shape), torch_reader(t)) for k, t in state.items()}


def _key_map(config: ModelConfig, source_keys: set[str], rows: list[KeyRow]) -> dict[str, str]:
    """Table key -> the key as this checkpoint spells it (base-model checkpoints drop a prefix)."""
    probe = rows[0][0]
    for drop in ("", *architecture(config.model_type).optional_prefixes):
        if probe.startswith(drop) and probe[len(drop):] in source_keys:
            break
    else:
        raise CheckpointError(
            f"checkpoint does not look like a {config.model_type} model: no {probe!r} "
            f"(found e.g. {sorted(source_keys)[:3]})"
        )
    strip = lambda k: k[len(drop):] if k.startswith(drop) else k
    names = {hf.format(i=i): strip(hf.format(i=i)) for hf, _, _ in rows
             for i in (range(config.n_layers) if "{i}" in hf else [0])}
    for alias, key in architecture(config.model_type).key_aliases.items():
        if key in names and names[key] not in source_keys and alias in source_keys:
            names[key] = alias
    return names


class CheckpointReader:
    """The params leaves of a checkpoint (or parts of them), checked against a config.

    Construction checks names and shapes from the file headers alone; `leaf(path, index)` then reads
    the stacked params leaf at `path` restricted to `index` (slices of the leaf's own axes), already
    transposed into jaxprompt's layout.
    """

    def __init__(self, config: ModelConfig, source: TensorSource):
        self.config, self.source = config, source
        rows = key_rows(config)
        self.rows = {path: (hf, transpose) for hf, path, transpose in rows}
        self.names = _key_map(config, source.keys(), rows)
        self.shapes = Model(config).param_shapes()
        missing = sorted(self.names[k] for k in self.names if self.names[k] not in source.keys())
        head = tied_head_key(config)
        ignored = architecture(config.model_type).ignored_suffixes
        extra = sorted(k for k in source.keys() - set(self.names.values())
                       if not k.endswith(ignored) and not (head and k.endswith(head)))
        if missing or extra:
            raise CheckpointError(
                f"checkpoint {source.directory} does not match the {config.model_type} config: "
                + (f"missing tensors {missing[:8]}{' ...' if len(missing) > 8 else ''}; " if missing else "")
                + (f"unexpected tensors {extra[:8]}{' ...' if len(extra) > 8 else ''}" if extra else "")
            )
        for hf, path, transpose in rows:
            want = _get(self.shapes, path).shape
            layered = "{i}" in hf
            want = want[1:] if layered else want
            file_shape = tuple(want[::-1] if transpose else want)
            for i in range(config.n_layers) if layered else [0]:
                key = self.names[hf.format(i=i)]
                if source.shape(key) != file_shape:
                    raise CheckpointError(f"tensor {key} has shape {source.shape(key)}, the "
                                          f"{config.model_type} config expects {file_shape}")
        if head and head in source.keys():
            table = self.names[rows[0][0]]
            if source.shape(head) != source.shape(table):
                raise CheckpointError(f"tied {head} has shape {source.shape(head)}, embeddings {source.shape(table)}")

    def leaf(self, path: tuple[str, ...], index: tuple[slice, ...] | None = None, dtype=jnp.float32) -> np.ndarray:
        hf, transpose = self.rows[path]
        shape = _get(self.shapes, path).shape
        index = tuple(index) if index is not None else tuple(slice(None) for _ in shape)
        layered = "{i}" in hf
        inner = index[1:] if layered else index
        file_index = tuple(inner[::-1] if transpose else inner)

        whole = all(s == slice(None) for s in file_index)

        def read(key):  # in the file's dtype; transposed as a view
            x = np.asarray(self.source.get(key, None if whole else file_index))
            return x.T if transpose else x

        if not layered:
            x = read(self.names[hf])
            if not transpose:
                return x.astype(_np_dtype(dtype), copy=False)
            out = np.empty(x.shape, _np_dtype(dtype))
            _copy_into(out, x)
            return out
        layers = range(self.config.n_layers)[index[0]]
        first = read(self.names[hf.format(i=layers[0])]) if len(layers) else None
        # one buffer for the stack, each layer converted into its place (no list of copies to stack)
        out = np.empty((len(layers), *(first.shape if first is not None else ())), _np_dtype(dtype))
        # the next layer is read from disk while this one is copied into place (both release the GIL)
        with ThreadPoolExecutor(1) as pool:
            pending = None
            for j, i in enumerate(layers):
                x = first if j == 0 else pending.result()
                if j + 1 < len(layers):
                    pending = pool.submit(read, self.names[hf.format(i=layers[j + 1])])
                _copy_into(out[j], x)
        return out


def _copy_into(out: np.ndarray, x: np.ndarray, block: int = 256) -> None:
    """`out[...] = x` (with any dtype conversion). A transposed `x` (a weight read in the file's
    [out, in] layout) is copied in 256 x 256 tiles that stay in cache: numpy's own strided copy
    walks one of the two arrays a column at a time, about half the speed (a 2048 x 8192 bf16
    kernel: 0.12 s against 0.06), and slower than reading the same bytes from disk."""
    if x.ndim != 2 or x.flags.c_contiguous:
        out[...] = x
        return
    for i in range(0, x.shape[0], block):
        for j in range(0, x.shape[1], block):
            out[i:i + block, j:j + block] = x[i:i + block, j:j + block]


def load_params(config: ModelConfig, source: TensorSource, dtype=jnp.float32, shardings=None,
                quantize: str | Scheme | None = None) -> dict:
    """The params pytree, leaf by leaf in `dtype`: peak host memory is the params plus one leaf.

    With `shardings` (a pytree of `jax.sharding.Sharding` like the params, or a function of the
    params' shape pytree returning one), every leaf is created already sharded: each device's slice
    is read from the file on its own (`jax.make_array_from_callback`), so a host reads only the
    slices its devices hold and never a whole large tensor at once.

    With `quantize` ("int8", "int4" or a `quantize.Scheme`), the layer stack's kernels are held as
    `layers.quantized.Quantized` integers and scales, each quantized as its layers are read: the
    peak is the quantized params plus one layer of one kernel in float32 (or plus the largest
    other leaf).
    """
    reader = CheckpointReader(config, source)
    scheme = scheme_of(quantize)
    shapes = quantized_shapes(config, Model(config).param_shapes(dtype), quantize)
    names = lambda path: tuple(e.key for e in path)
    if callable(shardings):
        shardings = shardings(shapes)

    def one(path, spec, sharding=None):
        if is_quantized(spec):
            return load_quantized(reader, names(path), spec, scheme, sharding)
        if sharding is None:
            return jnp.asarray(reader.leaf(names(path), dtype=dtype), dtype=spec.dtype)
        return jax.make_array_from_callback(spec.shape, sharding,
                                            lambda index, path=names(path): reader.leaf(path, index, dtype))

    if shardings is None:
        return jax.tree_util.tree_map_with_path(one, shapes, is_leaf=is_quantized)
    return jax.tree_util.tree_map_with_path(one, shapes, shardings, is_leaf=is_quantized)


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


def load_config(directory: str) -> ModelConfig:
    """The checkpoint's config; a checkpoint stored quantized (bitsandbytes, GPTQ, AWQ, ...: its
    weights are packed integers in that library's layout) is refused in one line."""
    try:
        hf = as_dict(directory)
    except (OSError, ValueError):
        hf = {}  # config_from_hf names what is wrong with the file
    method = hf.get("quantization_config") if isinstance(hf, dict) else None
    if method is not None:
        kind = method.get("quant_method", "an unknown method") if isinstance(method, dict) else "an unknown method"
        raise CheckpointError(f"{directory} holds weights quantized by {kind} (config.json quantization_config); "
                              "jaxprompt reads float checkpoints (float32, bfloat16, float16): load the unquantized "
                              "model and pass --quantize int8 or int4")
    try:
        return config_from_hf(directory)
    except ConfigError as e:
        raise ConfigError(f"{directory}: {e}") from e


def load_pretrained(name_or_path: str, dtype=jnp.float32, revision: str | None = None, shardings=None,
                    quantize: str | Scheme | None = None) -> tuple[ModelConfig, dict]:
    """Loads a HF checkpoint of any supported family as `(config, frozen params)` in `dtype`
    (`shardings`, `quantize`: see `load_params`). From here on the process returns the compiler's
    freed memory to the OS after each compile (`host_memory`)."""
    host_memory.release_after_compiles()
    directory = resolve(name_or_path, revision)
    config = load_config(directory)
    return config, load_params(config, TensorSource(directory), dtype, shardings, quantize)
