"""The pure training step over a small state, and the evaluation step.

`train_step(state, frozen, batch) -> (state, metrics)`: gradients are taken with respect to
`state.params` only (the prompt pytree when prompt tuning); the frozen LM weights are an ordinary
argument and never get a gradient. The loop that drives these steps is training/loop.py.
"""

from __future__ import annotations

from typing import Any, Callable

import jax
import jax.numpy as jnp
import optax
from flax import struct

# loss_fn(params, frozen, batch, rng, step) -> (sum of per-token losses, number of tokens)
LossFn = Callable[[Any, Any, dict, jax.Array, jax.Array], tuple[jax.Array, jax.Array]]
Reduce = Callable[[Any], Any]


@struct.dataclass
class TrainState:
    step: jax.Array
    params: Any  # what trains
    opt_state: Any
    rng: jax.Array

    @classmethod
    def create(cls, params, optimizer: optax.GradientTransformation, rng: jax.Array) -> "TrainState":
        params = jax.tree.map(jnp.asarray, params)
        return cls(step=jnp.zeros((), jnp.int32), params=params, opt_state=optimizer.init(params), rng=rng)


def _all_finite(tree) -> jax.Array:
    return jnp.all(jnp.stack([jnp.all(jnp.isfinite(x)) for x in jax.tree.leaves(tree)]))


def summed_loss_and_grads(loss_fn: LossFn, micro_batches: int = 1):
    """`(params, frozen, batch, rng, step) -> (loss sum, target count, gradient of the sum)`.

    With `micro_batches > 1` the batch is cut into that many equal slices computed one after
    another (`lax.scan`, so only one slice's activations are alive) and their sums and counts are
    added: dividing once at the end gives exactly the whole batch's mean gradient, whatever the
    slices' target counts (a mean of per-slice means would weight a slice's tokens by its count).
    Slice j holds rows j, j + M, j + 2M, ...: every device's contiguous block of a batch sharded
    along `data` contributes to every slice, so no row moves between devices.
    """
    grad_fn = jax.value_and_grad(loss_fn, has_aux=True)

    def one(params, frozen, batch, rng, step):
        (loss_sum, count), grads = grad_fn(params, frozen, batch, rng, step)
        return loss_sum, count, grads

    if micro_batches == 1:
        return one

    def accumulated(params, frozen, batch, rng, step):
        def split(x):
            if x.shape[0] % micro_batches:
                raise ValueError(f"batch of {x.shape[0]} rows does not split into {micro_batches} micro-batches")
            return x.reshape(x.shape[0] // micro_batches, micro_batches, *x.shape[1:]).swapaxes(0, 1)  # [M, B/M, ...]

        def body(total, part):
            piece, i = part
            out = one(params, frozen, piece, jax.random.fold_in(rng, i), step)
            return jax.tree.map(jnp.add, total, out), None

        zero = (jnp.zeros((), jnp.float32), jnp.zeros((), jnp.float32), jax.tree.map(jnp.zeros_like, params))
        total, _ = jax.lax.scan(body, zero, (jax.tree.map(split, batch), jnp.arange(micro_batches)))
        return total

    return accumulated


def make_train_step(loss_fn: LossFn, optimizer: optax.GradientTransformation, reduce: Reduce = lambda x: x,
                    micro_batches: int = 1):
    """A pure step. `reduce` sums (loss, count, grads) across data-parallel replicas (see parallel/strategies.py).

    A step whose loss, gradient or updated parameters are not all finite leaves the state
    unchanged and reports `finite=False`; the loop then stops and names the step.
    """
    loss_and_grads = summed_loss_and_grads(loss_fn, micro_batches)

    def train_step(state: TrainState, frozen, batch: dict) -> tuple[TrainState, dict]:
        rng = jax.random.fold_in(state.rng, state.step)
        loss_sum, count, grads = reduce(loss_and_grads(state.params, frozen, batch, rng, state.step))
        count = jnp.maximum(count, 1.0)
        grads = jax.tree.map(lambda g: g / count, grads)
        loss = loss_sum / count
        grad_norm = optax.tree.norm(grads)
        updates, opt_state = optimizer.update(grads, state.opt_state, state.params)
        params = optax.apply_updates(state.params, updates)
        finite = jnp.isfinite(loss) & jnp.isfinite(grad_norm) & _all_finite(params)
        keep = lambda new, old: jax.tree.map(lambda n, o: jnp.where(finite, n, o), new, old)
        new_state = state.replace(step=state.step + 1, params=keep(params, state.params),
                                  opt_state=keep(opt_state, state.opt_state))
        return new_state, {"loss": loss, "grad_norm": grad_norm, "tokens": count, "finite": finite}

    return train_step


def make_eval_step(loss_fn: LossFn, reduce: Reduce = lambda x: x):
    def eval_step(params, frozen, batch: dict, step) -> dict:
        loss_sum, count = loss_fn(params, frozen, batch, jax.random.key(0), step)
        loss_sum, count = reduce((loss_sum, count))
        return {"loss_sum": loss_sum, "tokens": count}

    return eval_step


# ---- a population's step: K prompts by one program (population.py) ------------------------------

MEMBER_AXIS = 0  # of a population's state
BATCH_MEMBER_AXIS = 1  # of a population's training batch: [B, K, ...]


def vmap_train_step(step):
    """`(state [K], frozen, batch [B, K]) -> (state [K], metrics [K])` from a one-prompt step.

    Collectives the step holds (a data-parallel `psum`) keep working under `vmap`: they sum over
    devices, member by member."""
    return jax.vmap(step, in_axes=(MEMBER_AXIS, None, BATCH_MEMBER_AXIS))


def vmap_eval_step(step):
    """`(params [K], frozen, batch, step) -> {"loss_sum": [K], "tokens": [K]}`: one validation
    batch scored by every member."""
    return jax.vmap(step, in_axes=(MEMBER_AXIS, None, None, None))
