"""Optimizers over the prompt pytree, partitioned by its top-level parts.

Parts are the prompt dict's keys (`embeddings`, `inputs`, `encoder`, `kv`, `mlp`, `logits`), so
e.g. a p-tuning encoder and its inputs can train at different rates, and any part can be frozen.
"""

from __future__ import annotations

import dataclasses

import jax
import optax


@dataclasses.dataclass(frozen=True)
class OptimizerConfig:
    lr: float = 0.3  # soft prompts like large rates (Lester et al. used 0.3 with Adafactor)
    optimizer: str = "adamw"  # adamw | adam | sgd | adafactor
    schedule: str = "constant"  # constant | cosine | linear
    warmup_steps: int = 0
    total_steps: int = 1000
    weight_decay: float = 0.0
    clip_norm: float | None = 1.0
    accumulate: int = 1  # gradient accumulation: apply an update every k steps
    part_lr: tuple[tuple[str, float], ...] = ()  # per-part learning rates, e.g. (("encoder", 1e-3),)
    frozen_parts: tuple[str, ...] = ()  # parts that do not train


def _schedule(c: OptimizerConfig, lr: float) -> optax.Schedule:
    if c.schedule == "constant":
        return optax.join_schedules([optax.linear_schedule(0.0, lr, c.warmup_steps), optax.constant_schedule(lr)],
                                    [c.warmup_steps]) if c.warmup_steps else optax.constant_schedule(lr)
    if c.schedule == "cosine":
        return optax.warmup_cosine_decay_schedule(0.0, lr, c.warmup_steps, max(c.total_steps, c.warmup_steps + 1))
    if c.schedule == "linear":
        return optax.join_schedules([optax.linear_schedule(0.0, lr, c.warmup_steps),
                                     optax.linear_schedule(lr, 0.0, max(c.total_steps - c.warmup_steps, 1))],
                                    [c.warmup_steps])
    raise ValueError(f"unknown schedule {c.schedule!r}; use constant, cosine or linear")


def _base(c: OptimizerConfig, lr: float) -> optax.GradientTransformation:
    schedule = _schedule(c, lr)
    if c.optimizer == "adamw":
        return optax.adamw(schedule, weight_decay=c.weight_decay)
    if c.optimizer == "adam":
        return optax.adam(schedule)
    if c.optimizer == "sgd":
        return optax.sgd(schedule)
    if c.optimizer == "adafactor":
        return optax.adafactor(schedule)
    raise ValueError(f"unknown optimizer {c.optimizer!r}; use adamw, adam, sgd or adafactor")


def part_labels(prompt: dict) -> dict:
    """Each leaf labelled with its top-level part name."""
    return {part: jax.tree.map(lambda _: part, sub) for part, sub in prompt.items()}


def make_optimizer(c: OptimizerConfig, prompt: dict) -> optax.GradientTransformation:
    parts = set(prompt)
    unknown = (set(dict(c.part_lr)) | set(c.frozen_parts)) - parts
    if unknown:
        raise ValueError(f"unknown prompt part(s) {sorted(unknown)}; this prompt has {sorted(parts)}")
    rates = dict(c.part_lr)
    transforms = {part: optax.set_to_zero() if part in c.frozen_parts else _base(c, rates.get(part, c.lr))
                  for part in parts}
    tx = optax.partition(transforms, part_labels)
    if c.clip_norm:
        tx = optax.chain(optax.clip_by_global_norm(c.clip_norm), tx)
    if c.accumulate > 1:
        tx = optax.MultiSteps(tx, every_k_schedule=c.accumulate)
    return tx
