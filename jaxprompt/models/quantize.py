"""Weight-only quantization of a frozen model (`--quantize int8|int4`), on the host: layer by layer
as a checkpoint is read (`load_quantized`, called by loading.py), or of params already in memory
(`quantize_params`: random models, measurements).

What is quantized: the matmul kernels of the layer stack (attention and MLP projections), the bulk
of every model. The token-embedding table and the output head stay in the compute dtype, as
bitsandbytes leaves them under transformers: they are the space prompts live in (initialisation,
PEZ and relaxed prompts, `inspect`), a gather reads few of the table's rows, and the head's
logits are what every metric reads. Their cost: 0.53 GB at Llama-3.2-1B's tied 128,256 x 2,048
in bf16, 2.1 GB at Llama-3.1-8B's untied pair (docs/quantization.md).

The schemes (docs/quantization.md says why these): int8 with one scale per output channel
(absmax / 127, round to nearest); int4 as NF4 codes (Dettmers et al. 2023, "QLoRA") with one
absmax scale per group of 64 inputs. `Scheme` names the other formats and group sizes the
measurements compare. Scales are stored in the compute dtype, and each weight is quantized against
its stored (rounded) scale.
"""
from __future__ import annotations

import dataclasses
import functools
from concurrent.futures import ThreadPoolExecutor

import jax
import jax.numpy as jnp
import ml_dtypes
import numpy as np

from jaxprompt.models.architecture import leaf_at, with_leaf
from jaxprompt.models.layers.quantized import FORMATS, NF4_LEVELS, Quantized, is_quantized
from jaxprompt.models.model_config import ConfigError, ModelConfig
from jaxprompt.models.registry import architecture


@dataclasses.dataclass(frozen=True)
class Scheme:
    """How kernels are held: a `layers.quantized` format, and for 4-bit formats the inputs that
    share a scale."""

    format: str
    group: int | None = None  # None for int8: one scale per output channel

    def __post_init__(self):
        if self.format not in FORMATS:
            raise ValueError(f"unknown quantization format {self.format!r}; formats: {', '.join(FORMATS)}")
        if (self.format == "int8") != (self.group is None) or (self.group is not None and self.group % 2):
            raise ValueError(f"{self.format} needs {'no group' if self.format == 'int8' else 'an even group size'}")

    def __str__(self) -> str:
        return self.format if self.group is None else f"{self.format}-g{self.group}"

    @property
    def bits(self) -> int:
        return 8 if self.format == "int8" else 4


# what `--quantize` names (config.QUANTIZE): the schemes docs/quantization.md measured and chose
SCHEMES = {"int8": Scheme("int8"), "int4": Scheme("nf4", 64)}
# the level each code's value rounds to lies between these (nearest level, ties to the lower)
_NF4_BOUNDS = (NF4_LEVELS[1:] + NF4_LEVELS[:-1]) / 2


def scheme_of(quantize: str | Scheme | None) -> Scheme | None:
    """The scheme `quantize` names (None or "none": weights as they are)."""
    if quantize is None or isinstance(quantize, Scheme):
        return quantize
    if quantize == "none":
        return None
    if quantize not in SCHEMES:
        raise ConfigError(f"unknown quantization {quantize!r}; use one of none, {', '.join(SCHEMES)}")
    return SCHEMES[quantize]


def quantized_scheme(params) -> str | None:
    """How `params` hold their kernels, as `str(Scheme)` ("int8", "nf4-g64"), or None."""
    found = {f"{x.format}" + ("" if x.format == "int8" else f"-g{x.group}")
             for x in jax.tree.leaves(params, is_leaf=is_quantized) if is_quantized(x)}
    return ",".join(sorted(found)) or None


# ---- which leaves, and their shapes --------------------------------------------------------------

def quantized_paths(config: ModelConfig) -> list[tuple[str, ...]]:
    """The params paths held quantized: every kernel of the layer stack."""
    from jaxprompt.models.model import Model

    stack = architecture(config.model_type).stack_key
    shapes = jax.tree_util.tree_flatten_with_path(Model(config).param_shapes())[0]
    paths = [tuple(e.key for e in path) for path, _ in shapes]
    return [p for p in paths if p[0] == stack and p[-1] == "kernel"]


def check_quantizable(config: ModelConfig, quantize: str | Scheme | None) -> None:
    """Refuses, in one line, a model whose kernels the scheme cannot hold (4-bit groups must tile
    every kernel's inputs)."""
    scheme = scheme_of(quantize)
    if scheme is None or scheme.group is None:
        return
    from jaxprompt.models.model import Model

    shapes = Model(config).param_shapes()
    for path in quantized_paths(config):
        inputs = leaf_at(shapes, path).shape[-2]
        if inputs % scheme.group:
            name = quantize if isinstance(quantize, str) else str(scheme)
            raise ConfigError(f"--quantize {name} holds weights in groups of {scheme.group} inputs; this "
                              f"{config.model_type} model's {'/'.join(path[1:-1])} has {inputs} inputs: use --quantize "
                              "int8")


def quantized_shape(spec: jax.ShapeDtypeStruct, scheme: Scheme) -> Quantized:
    """The shapes a kernel [..., I, O] of `spec.dtype` is held in (shape structs, no memory)."""
    *lead, I, O = spec.shape
    values = jax.ShapeDtypeStruct((*lead, I // (1 if scheme.format == "int8" else 2), O),
                                  jnp.int8 if scheme.format == "int8" else jnp.uint8)
    return Quantized(values, jax.ShapeDtypeStruct((*lead, I // (scheme.group or I), O), spec.dtype), scheme.format)


def quantized_shapes(config: ModelConfig, shapes: dict, quantize: str | Scheme | None) -> dict:
    """`shapes` (the params' shape structs) with the quantized kernels' shapes in their place."""
    scheme = scheme_of(quantize)
    if scheme is None:
        return shapes
    check_quantizable(config, quantize)
    for path in quantized_paths(config):
        shapes = with_leaf(shapes, path, quantized_shape(leaf_at(shapes, path), scheme))
    return shapes


# ---- quantizing ----------------------------------------------------------------------------------

def quantize_kernel(w: np.ndarray, scheme: Scheme, scale_dtype=np.float32) -> tuple[np.ndarray, np.ndarray]:
    """(values, scales) of a float kernel [..., I, O] (see layers/quantized.py for the layout): per
    group, the absmax over the largest level is the scale (rounded to `scale_dtype`), and each weight
    takes the level nearest to it over that stored scale."""
    *lead, I, O = w.shape
    G = scheme.group or I
    grouped = np.asarray(w, np.float32).reshape(*lead, I // G, G, O)
    top = {"int8": 127.0, "int4": 7.0, "nf4": 1.0}[scheme.format]
    scales = (np.abs(grouped).max(axis=-2) / top).astype(_np_dtype(scale_dtype))  # [..., I/G, O]
    stored = scales.astype(np.float32)[..., None, :]
    x = np.divide(grouped, stored, out=np.zeros_like(grouped), where=stored > 0).reshape(w.shape)
    if scheme.format == "int8":
        return np.clip(np.rint(x), -127, 127).astype(np.int8), scales
    if scheme.format == "nf4":
        codes = np.searchsorted(_NF4_BOUNDS, x).astype(np.uint8)
    else:
        codes = (np.clip(np.rint(x), -7, 7) + 8).astype(np.uint8)
    return codes[..., 0::2, :] | (codes[..., 1::2, :] << 4), scales


def quantize_params(config: ModelConfig, params: dict, quantize: str | Scheme | None) -> dict:
    """`params` (in memory) with the stack's kernels quantized, scales in each kernel's dtype."""
    scheme = scheme_of(quantize)
    if scheme is None:
        return params
    check_quantizable(config, quantize)
    for path in quantized_paths(config):
        w = leaf_at(params, path)
        values, scales = quantize_kernel(np.asarray(w, np.float32), scheme, w.dtype)
        params = with_leaf(params, path, Quantized(jnp.asarray(values), jnp.asarray(scales), scheme.format))
    return params


def load_quantized(reader, path: tuple[str, ...], spec: Quantized, scheme: Scheme, sharding=None) -> Quantized:
    """One quantized kernel read through `reader` (a `loading.CheckpointReader`): one layer at a
    time, read while the one before is quantized and written into its place in the stack on the
    device (a donated in-place update: a host-side stack would be copied whole by `device_put`, the
    largest kernel's quantized stack beside itself). The load's peak is the quantized model plus
    one layer of one kernel in float32. With `sharding` (a `Quantized` of shardings), each device's
    slice of the values and of the scales is read on its own (`_slice_of`)."""
    if sharding is not None:
        return Quantized(*(jax.make_array_from_callback(
            part.shape, where, lambda index, name=name: _slice_of(reader, path, spec, scheme, name, index))
            for name, part, where in (("values", spec.values, sharding.values),
                                      ("scales", spec.scales, sharding.scales))), spec.format)
    values, scales = jnp.zeros(spec.values.shape, spec.values.dtype), jnp.zeros(spec.scales.shape, spec.scales.dtype)
    read = lambda i: reader.leaf(path, (slice(i, i + 1),), np.float32)[0]
    with ThreadPoolExecutor(1) as pool:
        pending = pool.submit(read, 0)
        for i in range(values.shape[0]):
            layer = pending.result()
            if i + 1 < values.shape[0]:
                pending = pool.submit(read, i + 1)
            layer_values, layer_scales = quantize_kernel(layer, scheme, spec.scales.dtype)
            values, scales = _put_layer(values, layer_values, i), _put_layer(scales, layer_scales, i)
    return Quantized(values, scales, spec.format)


@functools.partial(jax.jit, donate_argnums=0)
def _put_layer(stack: jax.Array, layer: jax.Array, i) -> jax.Array:
    return jax.lax.dynamic_update_index_in_dim(stack, layer, i, 0)


def _slice_of(reader, path, spec: Quantized, scheme: Scheme, part: str, index: tuple[slice, ...]) -> np.ndarray:
    """The slice `index` of a kernel's values or scales: the kernel's rows it covers, widened to
    whole groups, read and quantized, then cut to the slice."""
    layers, rows, columns = index
    I = spec.shape[-2]
    per_row = (spec.packed if part == "values" else I // spec.scales.shape[-2])  # kernel rows a row stands for
    start, stop, _ = rows.indices(getattr(spec, part).shape[-2])
    G = scheme.group or I
    lo, hi = start * per_row // G * G, -(-stop * per_row // G) * G
    values, scales = quantize_kernel(reader.leaf(path, (layers, slice(lo, hi), columns), np.float32), scheme,
                                     spec.scales.dtype)
    if part == "scales":
        return scales[..., start - lo // G:stop - lo // G, :]
    return values[..., start - lo // spec.packed:stop - lo // spec.packed, :]


def _np_dtype(dtype) -> np.dtype:
    return np.dtype(ml_dtypes.bfloat16) if np.dtype(dtype) == np.dtype(ml_dtypes.bfloat16) else np.dtype(dtype)
