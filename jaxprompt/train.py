"""The pure training step over a small state, and what it needs.

`train_step(state, frozen, batch) -> (state, metrics)`: gradients are taken with respect to
`state.params` only (the prompt pytree when prompt tuning); the frozen LM weights are an ordinary
argument and never get a gradient.
"""

from __future__ import annotations

import dataclasses
import json
import os
import sys
import time
from typing import Any, Callable

import jax
import jax.numpy as jnp
import numpy as np
import optax
from flax import struct

# loss_fn(params, frozen, batch, rng, step) -> (sum of per-token losses, number of tokens)
LossFn = Callable[[Any, Any, dict, jax.Array, jax.Array], tuple[jax.Array, jax.Array]]
Reduce = Callable[[Any], Any]


class NonFiniteLossError(FloatingPointError):
    """Training produced a NaN/inf loss or gradient."""


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


def make_train_step(loss_fn: LossFn, optimizer: optax.GradientTransformation, reduce: Reduce = lambda x: x):
    """A pure step. `reduce` sums (loss, count, grads) across data-parallel replicas (see parallel.py).

    A step whose loss or gradient is not finite leaves the state unchanged and reports
    `finite=False`; the loop then stops and names the step.
    """

    def train_step(state: TrainState, frozen, batch: dict) -> tuple[TrainState, dict]:
        rng = jax.random.fold_in(state.rng, state.step)
        grad_fn = jax.value_and_grad(loss_fn, has_aux=True)
        (loss_sum, count), grads = grad_fn(state.params, frozen, batch, rng, state.step)
        loss_sum, count, grads = reduce((loss_sum, count, grads))
        count = jnp.maximum(count, 1.0)
        grads = jax.tree.map(lambda g: g / count, grads)
        loss = loss_sum / count
        grad_norm = optax.tree.norm(grads)
        finite = jnp.isfinite(loss) & jnp.isfinite(grad_norm)
        updates, opt_state = optimizer.update(grads, state.opt_state, state.params)
        params = optax.apply_updates(state.params, updates)
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


# ---- the loop ----------------------------------------------------------------------------------

@dataclasses.dataclass(frozen=True)
class LoopConfig:
    steps: int = 1000
    seed: int = 0
    eval_every: int = 100
    patience: int | None = None  # stop after this many evaluations without a new best
    keep: int = 3  # last-k checkpoints kept (plus the best)
    log_every: int = 10
    progress: bool = True


@dataclasses.dataclass
class FitResult:
    state: TrainState  # unreplicated, at the last step run
    best_val_loss: float | None
    best_step: int | None
    history: list[dict]
    stopped_early: bool


def evaluate_loss(eval_fn, dp, params, frozen, batches, step=0) -> float:
    """Mean target-token NLL over fixed batches, with a pmapped eval step."""
    total, count = 0.0, 0.0
    steps = dp.replicate(np.int32(step))
    for batch in batches:
        out = eval_fn(params, frozen, dp.shard(batch), steps)
        total += float(out["loss_sum"][0])
        count += float(out["tokens"][0])
    return total / max(count, 1.0)


def fit(
    loss_fn: LossFn,
    optimizer: optax.GradientTransformation,
    params,
    frozen,
    train_batches: Callable[[int], dict],
    val_batches: list[dict] | None = None,
    config: LoopConfig = LoopConfig(),
    run_dir: str | None = None,
    resume: bool = False,
    metadata: dict | None = None,
    devices=None,
) -> FitResult:
    """Trains `params` (the prompt) for `config.steps` steps, data parallel over `devices`.

    `train_batches(step)` must be a pure function of the step, so resuming from a checkpoint
    continues to the bit-identical result of an uninterrupted run. Validation (if given) runs every
    `eval_every` steps; each evaluation saves a checkpoint (last k + best) under `run_dir`.
    A NaN/inf loss or gradient raises `NonFiniteLossError` naming the step; that step's update was
    not applied and the checkpoints on disk are untouched.
    """
    from jaxprompt.checkpoint import Checkpointer
    from jaxprompt.parallel import DataParallel

    dp = DataParallel(devices)
    state = TrainState.create(params, optimizer, jax.random.PRNGKey(config.seed))
    history: list[dict] = []
    best, best_step, bad_evals = None, None, 0
    ckpt = Checkpointer(run_dir, keep=config.keep) if run_dir else None
    metrics_path = os.path.join(run_dir, "metrics.jsonl") if run_dir else None
    if resume and ckpt and ckpt.latest_step() is not None:
        state, meta = ckpt.restore(state)
        loop = meta.get("loop", {})
        history, best, best_step, bad_evals = (loop.get("history", []), loop.get("best"),
                                               loop.get("best_step"), loop.get("bad_evals", 0))
        _rewrite_metrics(metrics_path, history)
    elif metrics_path:
        _rewrite_metrics(metrics_path, [])

    step_fn = dp.train_step(loss_fn, optimizer)
    eval_fn = dp.eval_step(loss_fn) if val_batches else None
    frozen_r = dp.replicate(frozen)
    state_r = dp.replicate(state)
    start = int(state.step)
    pending: list[tuple[int, dict]] = []
    stopped_early = False
    tokens_done, t0 = 0, time.perf_counter()
    bar = _progress(config, start)
    if val_batches and start == 0:  # where the curve starts (not a checkpoint candidate)
        record = {"step": 0, "val_loss": evaluate_loss(eval_fn, dp, state_r.params, frozen_r, val_batches, 0)}
        history.append(record)
        _append_metrics(metrics_path, record)

    def flush():
        """Host-side look at the steps since the last flush (one device sync per flush)."""
        nonlocal pending
        for s, m in pending:
            m = {k: float(np.asarray(v)[0]) for k, v in m.items()}
            if not m["finite"]:
                raise NonFiniteLossError(
                    f"loss/gradient is not finite at step {s} (loss={m['loss']}, grad_norm={m['grad_norm']}); "
                    "the update was skipped and training stopped. Lower the learning rate, use fp32, or check "
                    "the batch for bad inputs."
                )
        if pending:
            s, m = pending[-1]
            record = {"step": s + 1, "train_loss": float(np.asarray(m["loss"])[0]),
                      "grad_norm": float(np.asarray(m["grad_norm"])[0])}
            history.append(record)
            _append_metrics(metrics_path, record)
            if bar:
                elapsed = time.perf_counter() - t0
                bar.set_postfix(loss=f"{record['train_loss']:.4f}", tok_s=f"{tokens_done / max(elapsed, 1e-9):.0f}")
        pending = []

    try:
        for step in range(start, config.steps):
            batch = train_batches(step)
            tokens_done += int(np.asarray(batch["mask"]).sum())
            state_r, metrics = step_fn(state_r, frozen_r, dp.shard(batch))
            pending.append((step, metrics))
            if bar:
                bar.update(1)
            done = step + 1
            if done % config.log_every == 0 or done == config.steps:
                flush()
            if val_batches and (done % config.eval_every == 0 or done == config.steps):
                flush()
                val = evaluate_loss(eval_fn, dp, state_r.params, frozen_r, val_batches, done)
                record = {"step": done, "val_loss": val}
                history.append(record)
                _append_metrics(metrics_path, record)
                improved = best is None or val < best
                if improved:
                    best, best_step, bad_evals = val, done, 0
                else:
                    bad_evals += 1
                if ckpt:  # batches are a function of the step: the step is the data position
                    loop = {"history": history, "best": best, "best_step": best_step, "bad_evals": bad_evals,
                            "data_position": done}
                    ckpt.save(dp.unreplicate(state_r), {**(metadata or {}), "loop": loop}, val_loss=val)
                if config.patience is not None and bad_evals >= config.patience:
                    stopped_early = True
                    break
        flush()
        final = dp.unreplicate(state_r)
        if ckpt and not val_batches:
            ckpt.save(final, {**(metadata or {}), "loop": {"history": history}})
    finally:
        if bar:
            bar.close()
        if ckpt:
            ckpt.close()
    return FitResult(final, best, best_step, history, stopped_early)


def _progress(config: LoopConfig, start: int):
    if not config.progress:
        return None
    from tqdm import tqdm

    return tqdm(total=config.steps, initial=start, desc="train", file=sys.stderr, dynamic_ncols=True,
                mininterval=1.0)


def _append_metrics(path: str | None, record: dict) -> None:
    if path:
        with open(path, "a") as f:
            f.write(json.dumps(record) + "\n")


def _rewrite_metrics(path: str | None, history: list[dict]) -> None:
    if path:
        os.makedirs(os.path.dirname(path), exist_ok=True)
        with open(path, "w") as f:
            f.writelines(json.dumps(r) + "\n" for r in history)
