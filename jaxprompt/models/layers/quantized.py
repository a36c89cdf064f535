"""Frozen matmul weights held in 8 or 4 bits, dequantized where each layer uses them.

A kernel `[..., I, O]` (inputs I, outputs O, any leading axes: layers) is held as
`Quantized(values, scales, format)`:

    int8  values int8 [..., I, O], one scale per output channel: scales [..., 1, O]
    int4  two 4-bit codes a byte along I: values uint8 [..., I/2, O] (row 2k in the low nibble,
          row 2k+1 in the high one); one scale per group of G consecutive inputs and output channel:
          scales [..., I/G, O]. A code c stands for the level c - 8 (symmetric, -7..7)
    nf4   the same layout; a code stands for the c-th NormalFloat level (Dettmers et al. 2023,
          "QLoRA": the 16 quantiles of a standard normal scaled to [-1, 1], with an exact zero)

and the weight is level x scale. Quantizing is the host's work as a checkpoint is read
(models/quantize.py); this module is what a step computes. `dequantize` runs inside the jitted
layer, one layer at a time: integers crossing the layer scan cannot be converted ahead of it (XLA
hoists a float conversion of a loop-invariant stack; see `layers.as_bits`), and on an accelerator
XLA fuses the conversion into the matmul's operand. `quantized_matmul`'s backward pass keeps the
integers, not a float copy of each layer (which plain differentiation would keep for every layer).
"""
from __future__ import annotations

import dataclasses
import functools

import jax
import jax.numpy as jnp
import numpy as np
from jaxtyping import Array, Float

FORMATS = ("int8", "int4", "nf4")

# The NormalFloat4 levels of QLoRA (Dettmers et al. 2023, appendix E; bitsandbytes' table).
NF4_LEVELS = np.array([
    -1.0, -0.6961928009986877, -0.5250730514526367, -0.39491748809814453, -0.28444138169288635,
    -0.18477343022823334, -0.09105003625154495, 0.0, 0.07958029955625534, 0.16093020141124725,
    0.24611230194568634, 0.33791524171829224, 0.44070982933044434, 0.5626170039176941, 0.7229568362236023, 1.0,
], np.float32)


@functools.partial(jax.tree_util.register_dataclass, data_fields=["values", "scales"], meta_fields=["format"])
@dataclasses.dataclass(frozen=True)
class Quantized:
    """A kernel [..., I, O] as integers and scales (see the module docstring). A pytree: `jax.tree.map`
    over frozen weights (slicing layers, sharding, holding as bits) treats values and scales alike."""

    values: Array  # int8 [..., I, O]; uint8 [..., I/2, O] for int4 and nf4
    scales: Array  # [..., I/G, O] in the compute dtype (G = I for int8)
    format: str = "int8"

    @property
    def packed(self) -> int:
        """Kernel rows per row of `values`: 2 for 4-bit codes, 1 for int8."""
        return 1 if self.format == "int8" else 2

    @property
    def shape(self) -> tuple[int, ...]:
        """The kernel's shape [..., I, O]."""
        *lead, rows, O = self.values.shape
        return (*lead, rows * self.packed, O)

    @property
    def dtype(self):
        """The dtype the kernel dequantizes to: the scales'."""
        return self.scales.dtype

    @property
    def group(self) -> int:
        """Consecutive inputs that share a scale (I for int8: one scale per output channel)."""
        return self.shape[-2] // self.scales.shape[-2]


def is_quantized(x) -> bool:
    return isinstance(x, Quantized)


def any_quantized(tree) -> bool:
    """Whether some kernel of `tree` is held quantized."""
    return any(map(is_quantized, jax.tree.leaves(tree, is_leaf=is_quantized)))


def levels(w: Quantized) -> Float[Array, "... I O"]:
    """The unscaled levels of every weight, in float32: int8 values, or 4-bit codes unpacked."""
    if w.format == "int8":
        return w.values.astype(jnp.float32)
    codes = jnp.stack([w.values & 0xF, w.values >> 4], axis=-2)  # [..., I/2, 2, O]: rows 2k, 2k+1
    codes = codes.reshape(w.shape)
    if w.format == "nf4":
        return jnp.asarray(NF4_LEVELS)[codes]
    return codes.astype(jnp.float32) - 8.0


def dequantize(w: Quantized, dtype=None) -> Float[Array, "... I O"]:
    """The kernel as `dtype` (default: the scales' dtype, the compute dtype): each level times its
    scale in float32, rounded once."""
    *lead, I, O = w.shape
    groups = w.scales.shape[-2]
    scaled = levels(w).reshape(*lead, groups, I // groups, O) * w.scales.astype(jnp.float32)[..., :, None, :]
    return scaled.reshape(w.shape).astype(dtype or w.dtype)


def quantized_matmul(x: Float[Array, "... I"], w: Quantized) -> Float[Array, "... O"]:
    """`x @ dequantize(w)`, differentiable in `x` only (the weights are frozen: no gradient reaches
    the scales). The backward pass dequantizes the layer again rather than keep it."""
    return _matmul(x, w.values, jax.lax.stop_gradient(w.scales), w.format)


@functools.partial(jax.custom_vjp, nondiff_argnums=(3,))
def _matmul(x, values, scales, format):
    return x @ dequantize(Quantized(values, scales, format))


def _matmul_forward(x, values, scales, format):
    # residuals: the integers and scales, which the scan passes through as they are (no stacked
    # copy), and an empty array of x's dtype to cast the input gradient back to
    return _matmul(x, values, scales, format), (values, scales, jnp.zeros((0,), x.dtype))


def _matmul_backward(format, residuals, g):
    values, scales, like = residuals
    w = dequantize(Quantized(values, scales, format))
    return (g @ w.T.astype(g.dtype)).astype(like.dtype), None, None


_matmul.defvjp(_matmul_forward, _matmul_backward)
