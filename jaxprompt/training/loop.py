"""The training loop: steps, validation, early stopping, checkpoints, metrics, NaN guard.

It drives the pure steps of step.py over devices through a strategy of parallel/strategies.py (the same
calls for either), and saves through runs/checkpoint.py; none of those know of it. In a multi-process
run every process runs the loop in step: each feeds its rows of every batch and takes part in
every checkpoint; process 0 alone writes the metrics. A signal stops every process at one step,
with a checkpoint of it (parallel/preemption.py).
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

from jaxprompt.config import LoopConfig
from jaxprompt.files import atomic_write
from jaxprompt.parallel import preemption
from jaxprompt.parallel.distributed import host, is_writer
from jaxprompt.parallel.strategies import DataParallel, Strategy
from jaxprompt.runs.checkpoint import Checkpointer, CheckpointError
from jaxprompt.runs.layout import METRICS
from jaxprompt.training.step import LossFn, TrainState


class NonFiniteLossError(FloatingPointError):
    """Training produced a NaN/inf loss, gradient, prompt, or validation loss."""


@dataclasses.dataclass
class FitResult:
    """A run's outcome. For a population, `best_val_loss` and `best_step` are lists (one per
    member) and `best_state` holds each member's prompt of its own best step."""

    state: TrainState  # host values, at the last step run
    best_val_loss: float | list[float | None] | None
    best_step: int | list[int | None] | None
    history: list[dict]
    stopped_early: bool
    best_state: TrainState | None = None


def evaluate_loss(eval_fn, strategy: Strategy, params, frozen, batches, step=0):
    """Mean target-token NLL over fixed batches, with the strategy's eval step on placed arguments:
    a float, or one per member ([K] array) for a population's eval step."""
    total, count = 0.0, 0.0
    steps = strategy.put_state(np.int32(step))
    for batch in batches:
        out = strategy.get(eval_fn(params, frozen, strategy.put_batch(batch), steps))
        total = total + np.asarray(out["loss_sum"], np.float64)
        count = count + np.asarray(out["tokens"], np.float64)
    mean = total / np.maximum(count, 1.0)
    return float(mean) if np.ndim(mean) == 0 else mean


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
    population: TrainState | None = None,
    learning_rates: Callable[[int], dict] | None = None,
    on_record: Callable[[dict], None] | None = None,
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

    A population (population.py): `population` is its first state (`initial_state`, leaves
    [K, ...]; `params` and `seed` are then unused) and `train_batches` gives [B, K, ...] batches
    (`MemberBatches`). Every member is validated on the same batches and keeps its own best (the
    best checkpoint holds each member's prompt of its own best step); a member out of patience
    keeps its best and no longer counts, and the run stops when every member is. History entries
    then hold one value per member.

    Each training entry also holds the rate of every prompt part at its last update
    (`learning_rates(step)`, part -> rate or a population's rates) and, in metrics.jsonl only, the
    tokens per second since the previous entry (wall clock: not part of the checkpointed history,
    which a resumed run reproduces exactly). `on_record(entry)` sees each entry as written
    (experiment tracking, tracking.py).

    A non-finite loss, gradient, updated prompt or validation loss (of a member still counting)
    raises `NonFiniteLossError` naming the step; that step's update was not applied and nothing of
    it was saved.

    A signal during the steps (SIGTERM, SIGINT, JAX's preemption notice: parallel/preemption.py, in
    every process of a multi-process run at the same step) ends the loop at a step boundary: that
    step's checkpoint is committed (as a last one: best stays the best validated) and
    `preemption.Stopped` is raised; resuming continues to the result of an uninterrupted run.
    """
    if config.steps is None:
        raise ValueError("fit needs LoopConfig.steps")
    strategy = strategy or DataParallel(devices)
    is_population = population is not None
    state = population if is_population else TrainState.create(host(params), optimizer, jax.random.PRNGKey(seed))
    K = int(state.step.shape[0]) if is_population else 1
    packed = (lambda values: list(values)) if is_population else (lambda values: values[0])  # as stored
    unpacked = (lambda stored: list(stored)) if is_population else (lambda stored: [stored])
    history: list[dict] = []
    best, best_step, bad_evals = [None] * K, [None] * K, [0] * K
    best_state = None  # a population's per-member best, on the host
    ckpt = Checkpointer(run_dir, keep=config.keep) if run_dir else None
    metrics_path = os.path.join(run_dir, METRICS) if run_dir and is_writer() else None
    if ckpt:
        if is_writer():
            ckpt.repair()  # a save a crash interrupted is not part of the run
        if ckpt.latest_step() is not None and not resume:
            raise CheckpointError(f"{run_dir} already holds checkpoints (step {ckpt.latest_step()}); "
                                  "resume the run or start a new one in an empty directory")
    if resume and ckpt and ckpt.latest_step() is not None:
        like = state
        state, meta = ckpt.restore(like)
        loop = meta["loop"]
        history = loop["history"]
        best, best_step, bad_evals = (unpacked(loop[k]) for k in ("best", "best_step", "bad_evals"))
        if is_population and ckpt.best_step() is not None:
            best_state = jax.tree.map(np.asarray, ckpt.restore(like, "best")[0])
        if metrics_path:  # the entries up to the checkpoint, with the speeds they were written with
            speeds = _speeds(metrics_path)
            atomic_write(metrics_path, "".join(json.dumps({**r, **speeds.get(r["step"], {})} if "train_loss" in r
                                                          else r) + "\n" for r in history))
    elif metrics_path:
        atomic_write(metrics_path, "")

    step_fn = strategy.train_step(loss_fn, optimizer, micro_batches, population=is_population)
    eval_fn = strategy.eval_step(eval_loss_fn or loss_fn, population=is_population) if val_batches else None
    frozen_r = strategy.put_frozen(frozen)
    state_r = strategy.put_state(state)
    start = int(np.max(state.step))
    pending: list[tuple[int, dict]] = []
    stopped_early = False
    tokens_done, t0 = 0, time.perf_counter()
    since = {"tokens": 0, "time": t0}  # of the last training entry
    bar = _progress(config.steps, start) if progress else None
    counting = lambda k: config.patience is None or bad_evals[k] < config.patience  # not out of patience

    def record(entry: dict, speed: dict | None = None) -> None:
        history.append(entry)
        written = {**entry, **(speed or {})}
        if metrics_path:
            with open(metrics_path, "a") as f:
                f.write(json.dumps(written) + "\n")
        if on_record and is_writer():
            on_record(written)

    def save(done: int, improved: list[bool]) -> None:
        nonlocal best_state
        if not (ckpt or (is_population and any(improved))):
            return
        now = strategy.get(state_r)
        if is_population and any(improved):
            mask = np.asarray(improved)
            pick = lambda new, old: np.where(mask.reshape(-1, *[1] * (new.ndim - 1)), new, old)
            best_state = now if best_state is None else jax.tree.map(pick, now, best_state)
        if ckpt:  # batches are a function of the step: the step is the data position
            loop = {"history": history, "best": packed(best), "best_step": packed(best_step),
                    "bad_evals": packed(bad_evals), "data_position": done}
            ckpt.save(now, {**(metadata or {}), "loop": loop}, is_best=any(improved), best=best_state)

    def member_of(k: int) -> str:
        return f" (member {k})" if is_population else ""

    if val_batches and start == 0:  # where the curve starts (not a checkpoint candidate)
        val = evaluate_loss(eval_fn, strategy, state_r.params, frozen_r, val_batches, 0)
        record({"step": 0, "val_loss": packed(np.atleast_1d(val).tolist())})

    def flush(record_entry: bool = True):
        """Host-side look at the steps since the last flush (one device sync per flush): the NaN
        guard, and a training entry for the last of them."""
        nonlocal pending
        pending = [(s, {k: np.atleast_1d(np.asarray(v, np.float64)) for k, v in strategy.get(m).items()})
                   for s, m in pending]
        for s, m in pending:
            for k in range(K):
                if not m["finite"][k] and counting(k):
                    raise NonFiniteLossError(
                        f"training went non-finite at step {s}{member_of(k)} (loss={float(m['loss'][k])}, "
                        f"grad_norm={float(m['grad_norm'][k])}); the update was skipped, nothing of it was saved, "
                        "and training stopped. Lower the learning rate, use float32, or check the batch for bad "
                        "inputs."
                    )
        if pending and record_entry:
            s, m = pending[-1]
            entry = {"step": s + 1, "train_loss": packed(m["loss"].tolist()),
                     "grad_norm": packed(m["grad_norm"].tolist())}
            if learning_rates:
                entry["lr"] = learning_rates(s)
            now = time.perf_counter()
            speed = {"tokens_per_s": (tokens_done - since["tokens"]) / max(now - since["time"], 1e-9)}
            since.update(tokens=tokens_done, time=now)
            record(entry, speed)
            if bar:
                elapsed = time.perf_counter() - t0
                bar.set_postfix(loss=f"{float(np.mean(m['loss'])):.4f}",
                                tok_s=f"{tokens_done / max(elapsed, 1e-9):.0f}")
        pending = []

    def validate(done: int) -> list[bool]:
        """Validates the prompt of step `done`: which members improved on their best."""
        improved = [False] * K
        if not val_batches:
            return improved
        val = np.atleast_1d(evaluate_loss(eval_fn, strategy, state_r.params, frozen_r, val_batches, done))
        for k in range(K):
            if counting(k) and not math.isfinite(val[k]):
                raise NonFiniteLossError(f"validation loss is not finite at step {done}{member_of(k)} "
                                         f"({val[k]}); nothing of this step was saved and training stopped")
        record({"step": done, "val_loss": packed(val.tolist())})
        for k in range(K):
            if not counting(k):
                continue  # out of patience: its best is final
            if best[k] is None or val[k] < best[k]:
                best[k], best_step[k], bad_evals[k], improved[k] = float(val[k]), done, 0, True
            else:
                bad_evals[k] += 1
        return improved

    try:
        with preemption.steps():
            for step in range(start, config.steps):
                batch = train_batches(step)
                tokens_done += int(np.asarray(batch["mask"]).sum())
                state_r, metrics = step_fn(state_r, frozen_r, strategy.put_batch(batch))
                preemption.arm()  # the step has compiled: from here a signal stops the loop at a step boundary
                pending.append((step, metrics))
                if bar:
                    bar.update(1)
                done = step + 1
                checkpoint_now = done % config.eval_every == 0 or done == config.steps
                if done % config.log_every == 0 or checkpoint_now:
                    flush()
                if checkpoint_now:
                    save(done, validate(done))
                    if not any(counting(k) for k in range(K)):
                        stopped_early = True
                        break
                if preemption.reached(done - start):  # every process at the same step
                    if not checkpoint_now:
                        # the NaN guard over the steps since the last entry; their entry is the one the
                        # next log boundary writes after resuming, as in an uninterrupted run
                        flush(record_entry=False)
                        save(done, [False] * K)
                    raise preemption.Stopped(done, preemption.taken(), preemption.sender())
            flush()
    finally:
        if bar:
            bar.close()
    return FitResult(strategy.get(state_r), packed(best), packed(best_step), history, stopped_early, best_state)


def _speeds(metrics_path: str) -> dict[int, dict]:
    """step -> the speed a metrics file recorded for it (training entries)."""
    out = {}
    try:
        with open(metrics_path) as f:
            for line in f:
                entry = json.loads(line)
                if "tokens_per_s" in entry:
                    out[entry["step"]] = {"tokens_per_s": entry["tokens_per_s"]}
    except (OSError, ValueError):
        pass  # no speeds to keep: the losses are what resuming must restore
    return out


def _progress(total: int, start: int):
    from tqdm import tqdm

    return tqdm(total=total, initial=start, desc="train", file=sys.stderr, dynamic_ncols=True, mininterval=1.0)
