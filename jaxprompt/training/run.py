"""A prompt-tuning run end to end: load, train, evaluate learned vs written, write the run directory.

What the run directory holds, and when it may be written, is runs/layout.py's; reading a run back
is runs/load.py's; the curve is curve.py's.

A multi-process run (parallel/distributed.py) is one run: process 0 judges, names and locks the
run directory and the others follow its decisions; every process trains, checkpoints and evaluates
(with a mesh these are collective), and process 0 alone writes the files and prints.
"""
from __future__ import annotations

import dataclasses
import json
import os
import time
from typing import Callable

import jax
import jax.numpy as jnp

from jaxprompt.config import DataConfig, Member, RunOptions, TrainConfig, parse_mesh
from jaxprompt.data.batches import Batches, eval_batches
from jaxprompt.data.tasks import Task, get_task
from jaxprompt.data.templates import TemplateError
from jaxprompt.evaluation.evaluate import evaluate_prompts, heldout_loss
from jaxprompt.evaluation.results import (
    EvalResult,
    PopulationResult,
    format_samples,
    format_table,
    learned_label,
    population_results,
)
from jaxprompt.files import atomic_write
from jaxprompt.models.loading import load_config, resolve
from jaxprompt.models.quantize import check_quantizable
from jaxprompt.models.registry import require_adaption_prompts
from jaxprompt.parallel.distributed import decided_by_writer, initialize, is_writer, run_devices
from jaxprompt.parallel.strategies import make_strategy
from jaxprompt.precision import as_dtype
from jaxprompt.prompts import method_from_config
from jaxprompt.prompts.loss import prompt_loss
from jaxprompt.runs.checkpoint import Checkpointer
from jaxprompt.runs.layout import (
    CURVE,
    RESULTS,
    RunError,
    check_run_dir,
    default_run_dir,
    differences,
    open_run_dir,
    read_run_info,
    run_info,
    write_run_info,
)
from jaxprompt.runs.load import load_prompt, member_of
from jaxprompt.session import Session, load_tokenizer
from jaxprompt.settings import SettingError
from jaxprompt.training.choices import check_loss, choice_training
from jaxprompt.training.curve import plot_curve
from jaxprompt.training.loop import fit
from jaxprompt.training.optim import learning_rates, make_optimizer, trained_only
from jaxprompt.training.population import MemberBatches, initial_state, member_optimizer, members_of
from jaxprompt.training.tracking import Trackers, result_scalars, written_scalars

# ---- building a run -------------------------------------------------------------------------------

def _check_method_fits(config: TrainConfig, session: Session) -> None:
    layers = session.config.n_layers
    top = config.method.top_layers
    if top is not None and top > layers:
        flag = config.method.flag_in_use("top_layers") or "prefix-top-layers"
        raise SettingError(f"--{flag} {top}: the model has {layers} layers; use 1..{layers}")
    if session.method.adapts_layers:
        require_adaption_prompts(session.config.model_type)
    n_virtual = {t.template.n_virtual(config.method.length) for t in session.all_tasks}
    if len(n_virtual) > 1:
        raise TemplateError(f"multi-task prompts need the same number of virtual tokens in every template; "
                            f"the tasks' templates have {sorted(n_virtual)}")


def _devices(options: RunOptions, data: DataConfig) -> list:
    """The devices of the run (every process's), checked against --devices, --mesh and the batch."""
    available = jax.local_devices()
    requested = options.devices
    if requested is not None and requested > len(available):
        raise SettingError(f"--devices {requested}: only {len(available)} local device(s) are available")
    devices = run_devices(requested)
    processes = jax.process_count()
    have = f"{len(devices)} device(s)" + (f" ({processes} processes x {len(devices) // processes})"
                                          if processes > 1 else "")
    if options.mesh is not None:
        mesh = parse_mesh(options.mesh)
        if mesh.devices != len(devices):
            raise SettingError(f"--mesh {options.mesh} needs {mesh.devices} devices; this run has {have}")
        split, ways = mesh.batch_split, mesh.split_text
    else:
        split, ways = len(devices), have
    if data.batch_size % (split * data.accumulate):
        raise SettingError(f"--batch-size {data.batch_size} is not divisible by {ways} x --accumulate "
                           f"{data.accumulate}")
    return devices


@dataclasses.dataclass
class RunResult:
    run_dir: str
    results: list[EvalResult | PopulationResult]
    history: list[dict]
    best_step: int | list[int | None] | None  # a population's: one per member
    train_seconds: float
    n_train: int
    members: tuple[Member, ...] = ()  # a population's (results then hold every member's)


def _splits(tasks: list[Task], config: TrainConfig) -> dict[str, list[list[dict]]]:
    """Per split, per task, the rows this run uses (capped as configured)."""
    out = {"train": [], "validation": [], "test": []}
    cap = lambda rows, n: rows[:n] if n is not None else rows
    for task in tasks:
        splits = task.load(seed=config.data_seed)
        # a task without validation rows validates on (the first of) its training rows
        val = splits["validation"] if splits["validation"] else splits["train"]
        out["train"].append(cap(splits["train"], config.data.train_examples))
        out["validation"].append(cap(val, config.data.eval_examples))
        out["test"].append(cap(splits["test"], config.data.eval_examples))
    return out


def _tagged(per_task: list[list[dict]]) -> list[dict]:
    """Rows of all tasks, each with its task's index (single task: the rows as they are)."""
    if len(per_task) == 1:
        return per_task[0]
    return [{**r, "task_id": i} for i, rows in enumerate(per_task) for r in rows]


def train_prompt(config: TrainConfig | None, options: RunOptions = RunOptions(), log=print,
                 started: Callable[[str], None] | None = None, members: tuple[Member, ...] | None = None
                 ) -> RunResult:
    """Trains a prompt as configured, evaluates it (and the written prompt), writes the run directory.

    With `config.seeds` K > 1, trains a population of K prompts at once (population.py): seeds
    `seed` .. `seed` + K - 1, or the K `members` given (e.g. Optuna trials of one shape, each with
    its own seed, rate and initialiser), on one data split (`config.data_seed`).

    With `options.resume` the run continues with its stored settings (`config` None, or equal to
    them). Settings, tasks and data are checked before the run directory is touched; `started(run_dir)`
    is called once it is locked.

    With `options.coordinator` (or in a cluster JAX detects) this process joins a multi-process
    run first, before anything touches a device; only process 0 logs and writes files."""
    if config is None and not options.resume:
        raise ValueError("train_prompt needs a config (or options.resume to use the stored one)")
    if config is not None and as_dtype(config.dtype) == jnp.float16:
        # float16's 5-bit exponent underflows small gradients to zero without loss scaling
        raise SettingError("--dtype float16 cannot train (no loss scaling; small gradients underflow to zero); "
                           "use bfloat16 or float32 (float16 is fine for eval and generate)")
    initialize(options.coordinator, options.num_processes, options.process_id, options.heartbeat_timeout)
    if not is_writer():
        log, options = (lambda *args, **kwargs: None), options.replace(progress=False)
    # process 0 names the run directory (a default name holds its clock) and judges it
    run_dir = decided_by_writer(lambda: options.out if options.out is not None else default_run_dir(config),
                                shared=True)
    decided_by_writer(lambda: check_run_dir(run_dir, options.resume, options.overwrite))
    if options.resume:  # every process reads the stored settings: a resumed run never rewrites them
        stored_info = read_run_info(run_dir)
        if stored_info.get("imported_from"):
            raise RunError(f"{run_dir} holds a prompt imported from {stored_info['imported_from']}, not a training "
                           "state: it cannot be resumed (evaluate, generate or export it; train a new run to train)")
        stored = stored_info["config"]
        if config is not None and config != stored:
            raise RunError(f"--resume uses the settings stored in {run_dir}: {differences(config, stored)[0]}")
        config = stored
        members = read_run_info(run_dir)["members"] or None
    members = tuple(members) if members is not None else members_of(config) if config.seeds > 1 else ()
    if members and len(members) != config.seeds:
        raise SettingError(f"--seeds {config.seeds}: {len(members)} population members were given")
    devices = _devices(options, config.data)
    tasks = [get_task(name) for name in config.tasks]
    check_loss(config.loss, tasks)
    if config.quantize != "none":  # a model the scheme cannot hold is refused before the run directory is touched
        check_quantizable(load_config(resolve(config.model)), config.quantize)
    splits = _splits(tasks, config)
    lock = decided_by_writer(lambda: open_run_dir(run_dir, options.resume, options.overwrite))
    try:
        if started:
            started(run_dir)
        return _train(config, options, run_dir, devices, tasks, splits, log, members)
    finally:
        if lock is not None:
            lock.release()


def written_validation_losses(session: Session, val_rows: list[list[dict]]) -> dict[str, float]:
    """Per task with a written prompt, that prompt's loss on the run's validation rows (what the
    learned prompt's validation curve is compared with), labelled as the results table labels it."""
    out = {}
    for i, rows in enumerate(val_rows):
        single, _ = session.task_session(i, None)
        if single.task.hard_prompt and rows:
            name = f"{single.task.name}: " if len(val_rows) > 1 else ""
            out[f"{name}written"] = heldout_loss(single, None, rows, hard_prompt=single.task.hard_prompt)
    return out


def _train(config: TrainConfig, options: RunOptions, run_dir: str, devices: list, tasks: list[Task],
           splits: dict[str, list[list[dict]]], log, members: tuple[Member, ...] = ()) -> RunResult:
    """`_tracked_train` with the trackers of `--log` (process 0's), closed however the run ends."""
    trackers = Trackers(options.log, run_dir, options.run_name, options.wandb_project) \
        if options.log and is_writer() else None
    try:
        return _tracked_train(config, options, run_dir, devices, tasks, splits, log, members, trackers)
    finally:
        if trackers is not None:
            trackers.close()


def _tracked_train(config: TrainConfig, options: RunOptions, run_dir: str, devices: list, tasks: list[Task],
                   splits: dict[str, list[list[dict]]], log, members: tuple[Member, ...] = (),
                   trackers: Trackers | None = None) -> RunResult:
    data = config.data
    train_rows, val_rows = _tagged(splits["train"]), _tagged(splits["validation"])
    if any(not rows for rows in splits["train"]):
        raise TemplateError(f"a task has no training examples: {[len(r) for r in splits['train']]}")
    steps = config.loop.total_steps(len(train_rows), data.batch_size)

    directory = resolve(config.model)
    tokenizer = load_tokenizer(directory)  # checks config.json before load_config reads it
    strategy = make_strategy(options.mesh, devices, load_config(directory).n_layers)
    method = method_from_config(config.method, tokenizer, tasks[0], steps, n_tasks=len(tasks))
    session = Session.load(directory, tasks[0], method, dtype=config.dtype, remat=config.remat, tokenizer=tokenizer,
                           cache=options.cache, tasks=tuple(tasks) if len(tasks) > 1 else (),
                           shardings=strategy.load_shardings, quantize=config.quantize)
    _check_method_fits(config, session)
    train_enc, val_enc = session.encode(train_rows), session.encode(val_rows)
    for i, rows in enumerate(splits["test"]):  # what evaluation will generate must fit, before training
        single, _ = session.task_session(i, None)
        single.encode(rows, with_target=False, new_tokens=single.task.max_new_tokens)
        if config.baseline and single.task.hard_prompt:
            single.encode(rows, hard_prompt=single.task.hard_prompt, with_target=False,
                          new_tokens=single.task.max_new_tokens)
    if members:  # member k starts where a single run with its seed, rate and initialiser would
        inits = {m.init: method_from_config(dataclasses.replace(config.method, init_from=m.init), tokenizer, tasks[0], steps,
                                      n_tasks=len(tasks)) for m in members}
        prompts = [inits[m.init].init(jax.random.key(m.seed), session.model, session.frozen, session.n_virtual)
                   for m in members]
        prompt, population = None, initial_state(prompts, members, config.optimizer, steps)
        optimizer = member_optimizer(config.optimizer, prompts[0], steps, members[0].lr)
    else:
        prompt = method.init(jax.random.key(config.seed), session.model, session.frozen, session.n_virtual)
        population, optimizer = None, make_optimizer(config.optimizer, prompt, total_steps=steps)
    info = run_info(config, config.model, session.all_tasks, steps, session.n_virtual, method, members)
    if not options.resume and is_writer():
        write_run_info(run_dir, info)
    n_test = sum(map(len, splits["test"]))
    held = config.dtype + ("" if config.quantize == "none" else f", matmul weights {config.quantize}")
    log(f"model {config.model} ({session.model.num_params() / 1e6:.1f}M params, {held}), "
        f"task {'+'.join(t.name for t in tasks)}: {len(train_rows)} train / {len(val_rows)} validation / "
        f"{n_test} test, method {method.name} (P={config.method.length}), {steps} steps on "
        f"{len(devices)} device(s)" + (f" in {jax.process_count()} processes" if jax.process_count() > 1 else "")
        + (f", mesh {options.mesh}" if options.mesh else "")
        + (f"; a population of {len(members)} prompts (seeds {', '.join(str(m.seed) for m in members)}) in one "
           "step" if members else ""))
    if options.resume:
        committed = Checkpointer(run_dir).latest_step()
        log(f"continuing from step {committed}, the last committed checkpoint" if committed is not None
            else "no checkpoint was committed: starting from step 0")
    written = written_validation_losses(session, splits["validation"]) if config.baseline else {}
    if trackers is not None:
        trackers.start(info, Checkpointer(run_dir).latest_step() if options.resume else None)

    def track(entry: dict) -> None:
        trackers.log(entry)
        if "val_loss" in entry and written:  # the written prompt's, beside the learned curve
            trackers.log_scalars(written_scalars(written), entry["step"])

    parts = prompt if prompt is not None else member_of(population.params, 0)
    rates = [learning_rates(config.optimizer, parts, steps, m.lr) for m in members] or \
        [learning_rates(config.optimizer, parts, steps)]
    rates_at = lambda s: {part: [float(r[part](s)) for r in rates] if members else float(rates[0][part](s))
                          for part in rates[0]}
    # the shared head is computed once per batch, at batch size 1, then read by every row: it saves
    # the head's positions in every row but one, and costs a pass of its own, so never at batch 1
    share = config.shared_prefix and data.batch_size // data.accumulate > 1
    shared = session.shared_len(train_enc + val_enc) if share else 0
    t0 = time.perf_counter()
    if config.loss == "choices":
        loss_fn, eval_loss_fn, train_batches, val_batches = choice_training(
            session, method, train_rows, val_rows, data.batch_size, config.seed, [m.seed for m in members],
            share)
    else:
        train_batches = MemberBatches(train_enc, data.batch_size, session.pad_id, [m.seed for m in members], shared) \
            if members else Batches(train_enc, data.batch_size, session.pad_id, seed=config.seed, shared_len=shared)
        val_batches = [b for _, b in eval_batches(val_enc, data.batch_size, session.pad_id, shared_len=shared)]
        loss_fn = prompt_loss(session.model, method)
        eval_loss_fn = prompt_loss(session.model, method, inference=True)
    result = fit(
        trained_only(config.optimizer, loss_fn), optimizer, prompt, session.frozen, train_batches, val_batches,
        dataclasses.replace(config.loop, steps=steps, eval_every=min(config.loop.eval_every, steps)),
        run_dir=run_dir, resume=options.resume, metadata={"run": info}, strategy=strategy,
        eval_loss_fn=eval_loss_fn,
        micro_batches=data.accumulate, seed=config.seed, progress=options.progress, population=population,
        learning_rates=rates_at, on_record=track if trackers is not None else None,
    )
    seconds = time.perf_counter() - t0
    best = load_prompt(run_dir, session, "best", members=len(members) or None)
    prompts = [member_of(best, k) for k in range(len(members))] if members else [best]
    per_prompt = evaluate_prompts(session, splits["test"], prompts, baseline=config.baseline,
                                  label=learned_label(config.method.name, config.method.length))
    results = population_results(per_prompt) if members else per_prompt[0]
    if is_writer():
        plot_curve(result.history, os.path.join(run_dir, CURVE), title=f"{'+'.join(t.name for t in tasks)} / {config.method.name}",
                   written=written)
        summary = {"results": [r.summary() for r in results], "samples": {r.label: r.samples for r in results},
                   "written_val_loss": written,
                   "best_step": result.best_step, "train_seconds": seconds, "steps": steps, "n_train": len(train_rows)}
        if members:
            summary["members"] = [{**dataclasses.asdict(m), "best_step": result.best_step[k],
                                   "results": [r.members[k].summary() for r in results]}
                                  for k, m in enumerate(members)]
        atomic_write(os.path.join(run_dir, RESULTS), json.dumps(summary, indent=2))
        if trackers is not None:
            trackers.log_scalars(result_scalars(summary["results"], summary.get("members")),
                                 max(h["step"] for h in result.history))
    log("\n" + format_table(results))
    log("\n" + format_samples(results[-1]))
    if members:
        log(f"\n(mean ± sample standard deviation over {len(members)} members; samples of member 0)")
    log(f"\nrun directory: {run_dir}  (curve: {os.path.join(run_dir, CURVE)})")
    return RunResult(run_dir, results, result.history, result.best_step, seconds, len(train_rows), members)
