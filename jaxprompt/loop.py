"""The training loop: steps, validation, early stopping, checkpoints, metrics, NaN guard.

It drives the pure steps of train.py over devices through a strategy of parallel.py (the same
calls for either), and saves through checkpoint.py; none of those know of it. In a multi-process
run every process runs the loop in step: each feeds its rows of every batch and takes part in
every checkpoint; process 0 alone writes the metrics.
"""

from __future__ import annotations

import dataclasses
import json
import math
import os
import sys
import time
from typing import Callable

import jax
import numpy as np
import optax

from jaxprompt.checkpoint import CheckpointError, Checkpointer
from jaxprompt.config import LoopConfig
from jaxprompt.distributed import host, is_writer
from jaxprompt.files import atomic_write
from jaxprompt.parallel import DataParallel, Strategy
from jaxprompt.train import LossFn, TrainState

METRICS = "metrics.jsonl"


class NonFiniteLossError(FloatingPointError):
    """Training produced a NaN/inf loss, gradient, prompt, or validation loss."""


@dataclasses.dataclass
class FitResult:
    state: TrainState  # host values, at the last step run
    best_val_loss: float | None
    best_step: int | None
    history: list[dict]
    stopped_early: bool


def evaluate_loss(eval_fn, strategy: Strategy, params, frozen, batches, step=0) -> float:
    """Mean target-token NLL over fixed batches, with the strategy's eval step on placed arguments."""
    total, count = 0.0, 0.0
    steps = strategy.put_state(np.int32(step))
    for batch in batches:
        out = strategy.get(eval_fn(params, frozen, strategy.put_batch(batch), steps))
        total += float(out["loss_sum"])
        count += float(out["tokens"])
    return total / max(count, 1.0)


def fit(
    loss_fn: LossFn,
    optimizer: optax.GradientTransformation,
    params,
    frozen,
    train_batches: Callable[[int], dict],
    val_batches: list[dict] | None = None,
    config: LoopConfig = LoopConfig(steps=1000),
    run_dir: str | None = None,
    resume: bool = False,
    metadata: dict | None = None,
    devices=None,
    *,
    strategy: Strategy | None = None,
    eval_loss_fn: LossFn | None = None,
    micro_batches: int = 1,
    seed: int = 0,
    progress: bool = False,
) -> FitResult:
    """Trains `params` (the prompt) for `config.steps` steps, spread over devices by `strategy`
    (default: data parallel over `devices`, all by default).

    `train_batches(step)` must be a pure function of the step, so resuming from a checkpoint
    continues to the bit-identical result of an uninterrupted run (and in a multi-process run
    every process computes the same global batch, of which it places its own rows). Validation
    (if given) runs every `eval_every` steps with `eval_loss_fn` (default `loss_fn`: pass the
    loss of the prompt's inference form, so the best checkpoint is chosen on what evaluation will
    report). Every `eval_every` steps and at the end, a checkpoint is committed under `run_dir`
    (last k + best).

    A non-finite loss, gradient, updated prompt or validation loss raises `NonFiniteLossError`
    naming the step; that step's update was not applied and nothing of it was saved.
    """
    if config.steps is None:
        raise ValueError("fit needs LoopConfig.steps")
    strategy = strategy or DataParallel(devices)
    state = TrainState.create(host(params), optimizer, jax.random.PRNGKey(seed))
    history: list[dict] = []
    best, best_step, bad_evals = None, None, 0
    ckpt = Checkpointer(run_dir, keep=config.keep) if run_dir else None
    metrics_path = os.path.join(run_dir, METRICS) if run_dir and is_writer() else None
    if ckpt:
        if is_writer():
            ckpt.repair()  # a save a crash interrupted is not part of the run
        if ckpt.latest_step() is not None and not resume:
            raise CheckpointError(f"{run_dir} already holds checkpoints (step {ckpt.latest_step()}); "
                                  "resume the run or start a new one in an empty directory")
    if resume and ckpt and ckpt.latest_step() is not None:
        state, meta = ckpt.restore(state)
        loop = meta["loop"]
        history, best, best_step, bad_evals = loop["history"], loop["best"], loop["best_step"], loop["bad_evals"]
        if metrics_path:
            atomic_write(metrics_path, "".join(json.dumps(r) + "\n" for r in history))
    elif metrics_path:
        atomic_write(metrics_path, "")

    step_fn = strategy.train_step(loss_fn, optimizer, micro_batches)
    eval_fn = strategy.eval_step(eval_loss_fn or loss_fn) if val_batches else None
    frozen_r = strategy.put_frozen(frozen)
    state_r = strategy.put_state(state)
    start = int(state.step)
    pending: list[tuple[int, dict]] = []
    stopped_early = False
    tokens_done, t0 = 0, time.perf_counter()
    bar = _progress(config.steps, start) if progress else None

    def record(entry: dict) -> None:
        history.append(entry)
        if metrics_path:
            with open(metrics_path, "a") as f:
                f.write(json.dumps(entry) + "\n")

    def save(done: int, is_best: bool) -> None:
        if ckpt:  # batches are a function of the step: the step is the data position
            loop = {"history": history, "best": best, "best_step": best_step, "bad_evals": bad_evals,
                    "data_position": done}
            ckpt.save(strategy.get(state_r), {**(metadata or {}), "loop": loop}, is_best=is_best)

    if val_batches and start == 0:  # where the curve starts (not a checkpoint candidate)
        record({"step": 0, "val_loss": evaluate_loss(eval_fn, strategy, state_r.params, frozen_r, val_batches, 0)})

    def flush():
        """Host-side look at the steps since the last flush (one device sync per flush)."""
        nonlocal pending
        pending = [(s, {k: float(v) for k, v in strategy.get(m).items()}) for s, m in pending]
        for s, m in pending:
            if not m["finite"]:
                raise NonFiniteLossError(
                    f"training went non-finite at step {s} (loss={m['loss']}, grad_norm={m['grad_norm']}); "
                    "the update was skipped, nothing of it was saved, and training stopped. Lower the learning "
                    "rate, use float32, or check the batch for bad inputs."
                )
        if pending:
            s, m = pending[-1]
            entry = {"step": s + 1, "train_loss": m["loss"], "grad_norm": m["grad_norm"]}
            record(entry)
            if bar:
                elapsed = time.perf_counter() - t0
                bar.set_postfix(loss=f"{entry['train_loss']:.4f}", tok_s=f"{tokens_done / max(elapsed, 1e-9):.0f}")
        pending = []

    try:
        for step in range(start, config.steps):
            batch = train_batches(step)
            tokens_done += int(np.asarray(batch["mask"]).sum())
            state_r, metrics = step_fn(state_r, frozen_r, strategy.put_batch(batch))
            pending.append((step, metrics))
            if bar:
                bar.update(1)
            done = step + 1
            checkpoint_now = done % config.eval_every == 0 or done == config.steps
            if done % config.log_every == 0 or checkpoint_now:
                flush()
            if not checkpoint_now:
                continue
            improved = False
            if val_batches:
                val = evaluate_loss(eval_fn, strategy, state_r.params, frozen_r, val_batches, done)
                if not math.isfinite(val):
                    raise NonFiniteLossError(f"validation loss is not finite at step {done} ({val}); "
                                             "nothing of this step was saved and training stopped")
                record({"step": done, "val_loss": val})
                improved = best is None or val < best
                if improved:
                    best, best_step, bad_evals = val, done, 0
                else:
                    bad_evals += 1
            save(done, improved)
            if config.patience is not None and bad_evals >= config.patience:
                stopped_early = True
                break
        flush()
    finally:
        if bar:
            bar.close()
    return FitResult(strategy.get(state_r), best, best_step, history, stopped_early)


def _progress(total: int, start: int):
    from tqdm import tqdm

    return tqdm(total=total, initial=start, desc="train", file=sys.stderr, dynamic_ncols=True, mininterval=1.0)
