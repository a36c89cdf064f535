"""Optimizers over the prompt pytree, partitioned by its top-level parts.

Parts are the prompt dict's keys (`embeddings`, `inputs`, `encoder`, `kv`, `mlp`, `logits`), so
e.g. a p-tuning encoder and its inputs can train at different rates, and any part can be frozen.
The settings are `config.OptimizerConfig`; the schedule's length is the run's (`total_steps`).
"""

from __future__ import annotations

import jax
import optax

from jaxprompt.config import OptimizerConfig
from jaxprompt.settings import SettingError

__all__ = ["OptimizerConfig", "learning_rates", "make_optimizer", "part_labels", "trained_only"]


def _schedule(c: OptimizerConfig, lr: float, total_steps: int | None) -> optax.Schedule:
    warmup = [optax.linear_schedule(0.0, lr, c.warmup_steps)] if c.warmup_steps else []
    if c.schedule == "constant":
        return optax.join_schedules(warmup + [optax.constant_schedule(lr)], [c.warmup_steps]) if warmup \
            else optax.constant_schedule(lr)
    if total_steps is None:
        raise ValueError(f"the {c.schedule} schedule needs the run's total_steps")
    if c.schedule == "cosine":
        # optax.warmup_cosine_decay_schedule(0, lr, warmup, total) term by term: it branches on the
        # peak rate's value, which a rate injected by optax.inject_hyperparams (traced) does not have
        decay_steps = max(total_steps, c.warmup_steps + 1) - c.warmup_steps
        return optax.join_schedules([optax.linear_schedule(0.0, lr, c.warmup_steps),
                                     optax.cosine_decay_schedule(lr, decay_steps)], [c.warmup_steps])
    return optax.join_schedules(warmup + [optax.linear_schedule(lr, 0.0, max(total_steps - c.warmup_steps, 1))],
                                [c.warmup_steps] if warmup else [])


def _base(c: OptimizerConfig, lr: float, total_steps: int | None) -> optax.GradientTransformation:
    schedule = _schedule(c, lr, total_steps)
    return {
        "adamw": lambda: optax.adamw(schedule, weight_decay=c.weight_decay),
        "adam": lambda: optax.adam(schedule),
        "sgd": lambda: optax.sgd(schedule),
        "adafactor": lambda: optax.adafactor(schedule),
    }[c.name]()


def part_labels(prompt: dict) -> dict:
    """Each leaf labelled with its top-level part name."""
    return {part: jax.tree.map(lambda _: part, sub) for part, sub in prompt.items()}


def make_optimizer(c: OptimizerConfig, prompt: dict, total_steps: int | None = None,
                   lr=None) -> optax.GradientTransformation:
    """The optimizer `c` describes for this prompt's parts; `total_steps` (the run's length) sizes
    decaying schedules. `lr` replaces `c.lr` (the rate of parts without their own): a number, or
    the traced scalar `optax.inject_hyperparams` passes, so that a population's members each keep
    their own rate in their optimizer state (population.py)."""
    parts = set(prompt)
    unknown = (set(dict(c.part_lr)) | set(c.frozen_parts)) - parts
    if unknown:
        flag = "--frozen-parts" if set(c.frozen_parts) & unknown else "--part-lr"
        raise SettingError(f"{flag}: unknown prompt part(s) {', '.join(sorted(unknown))}; "
                           f"this prompt has {', '.join(sorted(parts))}")
    rates = dict(c.part_lr)
    transforms = {part: optax.set_to_zero() if part in c.frozen_parts else _base(c, rates.get(part, c.lr if lr is None else lr), total_steps)
                  for part in parts}
    tx = optax.partition(transforms, part_labels)
    if c.clip_norm is not None:
        tx = optax.chain(_clip_trained_by_global_norm(c.clip_norm, c.frozen_parts), tx)
    return tx


def _clip_trained_by_global_norm(max_norm: float, frozen_parts) -> optax.GradientTransformation:
    """`optax.clip_by_global_norm` over the trained parts only: a frozen part's gradient neither
    enters the norm nor is scaled (the partition then zeroes it). Same (empty) state as optax's."""
    clip = optax.clip_by_global_norm(max_norm)

    def update(updates, state, params=None):
        trained = {part: g for part, g in updates.items() if part not in frozen_parts}
        clipped, state = clip.update(trained, state, params)
        return {**updates, **clipped}, state

    return optax.GradientTransformation(clip.init, update)


def trained_only(c: OptimizerConfig, loss_fn):
    """`loss_fn(params, ...)` with no gradient into `c.frozen_parts`: their gradients are zeros, so
    the step's logged `grad_norm` (and anything else reading the gradient) covers trained parts only."""
    if not c.frozen_parts:
        return loss_fn

    def loss(params, *args, **kwargs):
        params = {part: jax.lax.stop_gradient(p) if part in c.frozen_parts else p for part, p in params.items()}
        return loss_fn(params, *args, **kwargs)

    return loss


def learning_rates(c: OptimizerConfig, parts, total_steps: int | None = None, lr: float | None = None
                   ) -> dict[str, optax.Schedule]:
    """Per prompt part, the rate `make_optimizer(c, ..., total_steps, lr)` applies at each update
    (0 for a frozen part): what a run logs beside its losses."""
    rates = dict(c.part_lr)
    return {part: (lambda _: 0.0) if part in c.frozen_parts
            else _schedule(c, rates.get(part, c.lr if lr is None else lr), total_steps) for part in parts}
