"""A prompt-tuning run end to end: load, train, evaluate learned vs written, write the run directory.

Run directory (default `checkpoints/<task>-<method>-<time>`):
    run.json          the TrainConfig (nested, config.py) and what was loaded
    checkpoints.json  which checkpoints are committed (checkpoint.py)
    last/, best/      Orbax train-state checkpoints (the frozen LM is never saved)
    metrics.jsonl     train / validation loss per step
    curve.png         the training curve
    results.json      learned vs written test metrics and sample predictions (a population's:
                      mean ± std over members, and every member's own)
    .lock             held by the process writing the run

A directory that holds a run is never written without `resume` (continue it, with its stored
settings) or `overwrite` (replace it as a whole); two runs never write one directory at once.
Every file is written atomically (files.py).

A multi-process run (distributed.py) is one run: process 0 judges, names and locks the run
directory and the others follow its decisions; every process trains, checkpoints and evaluates
(with a mesh these are collective), and process 0 alone writes the files above and prints.
"""

from __future__ import annotations

import dataclasses
import json
import os
import shutil
import time
from typing import Callable

import jax
import jax.numpy as jnp
import matplotlib
import numpy as np

from jaxprompt import __version__
from jaxprompt.checkpoint import RECORD, Checkpointer
from jaxprompt.config import (REPO_ROOT, DataConfig, MethodConfig, RunOptions, SettingError, TrainConfig, from_dict,
                              get, leaves, one_line, parse_mesh, to_dict)
from jaxprompt.data import Batches, TemplateError, eval_batches
from jaxprompt.distributed import decided_by_writer, host, initialize, is_writer, run_devices
from jaxprompt.evaluate import (EvalResult, PopulationResult, evaluate_prompts, format_samples, format_table,
                                population_results)
from jaxprompt.files import DirectoryLock, atomic_write, remove_stale_temporaries
from jaxprompt.loop import METRICS, fit
from jaxprompt.loss import prompt_loss
from jaxprompt.models.convert import load_config, resolve
from jaxprompt.optim import make_optimizer
from jaxprompt.parallel import make_strategy
from jaxprompt.population import Member, MemberBatches, initial_state, member_optimizer, members_of, stack
from jaxprompt.population import member as member_prompt  # `member` is load_run's argument
from jaxprompt.prompts import MultiTask, PromptMethod, make_method, method_from_spec, method_spec
from jaxprompt.session import Session, load_tokenizer
from jaxprompt.tasks import BUILTIN, Task, get_task, task_from_dict
from jaxprompt.train import TrainState

RUN_INFO = "run.json"
RESULTS = "results.json"
CURVE = "curve.png"
RUN_FILES = (RUN_INFO, RECORD, "last", "best", METRICS, CURVE, RESULTS)
_INFO_KEYS = ("config", "model_dir", "tasks", "steps", "n_virtual", "method", "jaxprompt")
_OPTIONAL_INFO_KEYS = ("imported_from", "members")
# settings added after runs were first stored, with the value every run written before them had
_LATER_SETTINGS = {"split_seed": None, "seeds": 1}


class RunError(ValueError):
    """A run directory that cannot be used as asked (one line: what is wrong, what to do)."""


# ---- the run directory ---------------------------------------------------------------------------

def default_run_dir(config: TrainConfig) -> str:
    name = "+".join(os.path.splitext(os.path.basename(t))[0] for t in config.tasks)
    return os.path.join(REPO_ROOT, "checkpoints", f"{name}-{config.method.name}-{time.strftime('%Y%m%d-%H%M%S')}")


def holds_run(run_dir: str) -> bool:
    return any(os.path.exists(os.path.join(run_dir, name)) for name in RUN_FILES)


def check_run_dir(run_dir: str, resume: bool = False, overwrite: bool = False, flag: str = "--out") -> None:
    """Refuses, in one line and touching nothing, a `run_dir` that may not be written as asked: an
    existing run without `resume`/`overwrite`, nothing to resume, a file, a directory of other files."""
    if os.path.exists(run_dir) and not os.path.isdir(run_dir):
        raise RunError(f"{flag} {run_dir} is a file, not a directory")
    existing = holds_run(run_dir)
    if resume and not existing:
        raise RunError(f"nothing to resume in {run_dir}: it holds no run; drop --resume to start one there")
    if existing and not (resume or overwrite):
        how = "pass --resume to continue it, or --overwrite to replace it" if flag == "--out" \
            else "pass --overwrite to replace it"
        raise RunError(f"{run_dir} already holds a run: {how}")
    others = [n for n in os.listdir(run_dir) if n != DirectoryLock.NAME] if os.path.isdir(run_dir) else []
    if others and not existing:
        raise RunError(f"{flag} {run_dir} is a directory of other files, not a jaxprompt run; choose an empty or "
                       "new directory")


def open_run_dir(run_dir: str, resume: bool = False, overwrite: bool = False, flag: str = "--out") -> DirectoryLock:
    """`check_run_dir`, then locks `run_dir` (and with `overwrite`, empties it)."""
    check_run_dir(run_dir, resume, overwrite, flag)
    os.makedirs(run_dir, exist_ok=True)
    lock = DirectoryLock(run_dir)
    try:
        check_run_dir(run_dir, resume, overwrite, flag)  # what the lock's last holder may have done meanwhile
        if overwrite:
            for name in os.listdir(run_dir):
                if name != DirectoryLock.NAME:
                    path = os.path.join(run_dir, name)
                    shutil.rmtree(path) if os.path.isdir(path) and not os.path.islink(path) else os.remove(path)
        remove_stale_temporaries(run_dir)
    except BaseException:
        lock.release()
        raise
    return lock


def write_run_info(run_dir: str, info: dict) -> None:
    atomic_write(os.path.join(run_dir, RUN_INFO), json.dumps(info, indent=2))


def read_run_info(run_dir: str) -> dict:
    """run.json, checked: a missing or unknown key, or a setting out of range, is one line naming it
    (a setting newer than the run takes the value the run had: `_LATER_SETTINGS`).
    `info["config"]` is the `TrainConfig`, `info["members"]` a population's `Member`s (or ())."""
    path = os.path.join(run_dir, RUN_INFO)
    if not os.path.isfile(path):
        raise RunError(f"{run_dir} is not a jaxprompt run directory: no {RUN_INFO}")
    try:
        with open(path) as f:
            info = json.load(f)
    except (OSError, ValueError) as e:
        raise RunError(f"{path} cannot be read ({one_line(e)})") from None
    if not isinstance(info, dict):
        raise RunError(f"{path} is not a run description (a JSON object)")
    missing = [k for k in _INFO_KEYS if k not in info]
    extra = sorted(set(info) - set(_INFO_KEYS) - set(_OPTIONAL_INFO_KEYS))
    if missing or extra:
        raise RunError(f"{path} {'lacks the key ' + repr(missing[0]) if missing else 'has an unknown key ' + repr(extra[0])}")
    if isinstance(info["config"], dict):
        info["config"] = {**_LATER_SETTINGS, **info["config"]}
    try:
        info["config"] = from_dict(TrainConfig, info["config"], where=f"{path}: config")
        info["members"] = tuple(Member(**m) for m in info.get("members", ()))
    except (SettingError, TypeError) as e:
        raise RunError(f"{path}: {e}" if isinstance(e, TypeError) else str(e)) from None
    return info


def run_info(config: TrainConfig, model_dir: str, tasks, steps: int, n_virtual: int, method: PromptMethod,
             members: tuple[Member, ...] = (), **extra) -> dict:
    """What run.json holds: the settings, and what they resolved to (a population's members)."""
    return {"config": to_dict(config), **({"members": [dataclasses.asdict(m) for m in members]} if members else {}),
            "model_dir": os.path.abspath(model_dir) if os.path.isdir(model_dir) else model_dir,
            "tasks": [task_spec(t) for t in tasks], "steps": steps, "n_virtual": n_virtual,
            "method": method_spec(method), "jaxprompt": __version__, **extra}


def task_spec(task: Task) -> dict:
    spec = dataclasses.asdict(task)
    spec["template"], spec["target"] = task.template.text, task.template.target
    return {k: list(v) if isinstance(v, tuple) else v for k, v in spec.items()}


def task_of_spec(spec: dict) -> Task:
    builtin = BUILTIN.get(spec.get("name"))
    if builtin is not None and task_spec(builtin) == spec:
        return builtin
    return task_from_dict(spec)


# ---- building a run -------------------------------------------------------------------------------

def build_method(config: MethodConfig, tokenizer, task: Task, steps: int, n_tasks: int = 1) -> PromptMethod:
    """The prompt method a config describes (text init tokenised with the model's tokenizer; a
    relaxed prompt annealed over the run's `steps`; one prompt per task for several tasks)."""
    init_ids = ()
    if config.init == "text":
        text = config.init_text if config.init_text is not None else (task.hard_prompt or task.name)
        init_ids = tuple(tokenizer.encode(" " + text.strip()))
        if not init_ids:
            raise SettingError(f"--init-text {text!r} encodes to no tokens")
    embedding = dict(length=config.prompt_length, init_from=config.init, init_ids=init_ids)
    method = {
        "soft": lambda: make_method("soft", **embedding),
        "ptuning": lambda: make_method("ptuning", **embedding, encoder=config.encoder, hidden=config.encoder_hidden),
        "prefix": lambda: make_method("prefix", length=config.prompt_length, top_layers=config.prefix_top_layers,
                                      reparam_hidden=config.prefix_reparam, init_ids=init_ids),
        "relaxed": lambda: make_method("relaxed", **embedding, tau_end=config.tau_end, anneal_steps=steps),
        # PEZ starts from real tokens: the default init is sampled vocabulary
        "pez": lambda: make_method("pez", **{**embedding, "init_from": "sampled_vocab"
                                             if config.init == "vocab_normal" else config.init}),
        "adaption": lambda: make_method("adaption", length=config.prompt_length, top_layers=config.adapter_layers),
    }[config.name]()
    return MultiTask(base=method, n_tasks=n_tasks) if n_tasks > 1 else method


def _check_method_fits(config: TrainConfig, session: Session) -> None:
    layers = session.config.n_layers
    for name in ("prefix_top_layers", "adapter_layers"):
        top = getattr(config.method, name)
        if top is not None and top > layers:
            raise SettingError(f"--{name.replace('_', '-')} {top}: the model has {layers} layers; use 1..{layers}")
    if config.method.name == "adaption" and len(config.tasks) > 1:
        raise SettingError("--method adaption trains one task at a time (multi-task prompts are soft, ptuning, "
                           "prefix, relaxed or pez)")
    n_virtual = {t.template.n_virtual(config.method.prompt_length) for t in session.all_tasks}
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
        sizes = parse_mesh(options.mesh)
        if sizes["data"] * sizes["model"] != len(devices):
            raise SettingError(f"--mesh {options.mesh} needs {sizes['data'] * sizes['model']} devices; this run "
                               f"has {have}")
        split = sizes["data"]
        ways = f"the data axis ({split})"
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
    initialize(options.coordinator, options.num_processes, options.process_id)
    if not is_writer():
        log, options = (lambda *args, **kwargs: None), options.replace(progress=False)
    # process 0 names the run directory (a default name holds its clock) and judges it
    run_dir = decided_by_writer(lambda: options.out if options.out is not None else default_run_dir(config),
                                shared=True)
    decided_by_writer(lambda: check_run_dir(run_dir, options.resume, options.overwrite))
    if options.resume:  # every process reads the stored settings: a resumed run never rewrites them
        stored = read_run_info(run_dir)["config"]
        if config is not None and config != stored:
            raise RunError(f"--resume uses the settings stored in {run_dir}: {differences(config, stored)[0]}")
        config = stored
        members = read_run_info(run_dir)["members"] or None
    members = tuple(members) if members is not None else members_of(config) if config.seeds > 1 else ()
    if members and len(members) != config.seeds:
        raise SettingError(f"--seeds {config.seeds}: {len(members)} population members were given")
    devices = _devices(options, config.data)
    tasks = [get_task(name) for name in config.tasks]
    _check_loss(config, tasks)
    splits = _splits(tasks, config)
    lock = decided_by_writer(lambda: open_run_dir(run_dir, options.resume, options.overwrite))
    try:
        if started:
            started(run_dir)
        return _train(config, options, run_dir, devices, tasks, splits, log, members)
    finally:
        if lock is not None:
            lock.release()


def differences(config: TrainConfig, stored: TrainConfig) -> list[str]:
    """Settings that differ, as 'flag given vs stored' lines."""
    out = []
    for path, flat, *_ in leaves(TrainConfig):
        a, b = get(config, path), get(stored, path)
        if a != b:
            out.append(f"--{flat.replace('_', '-')} {a} differs from the stored {b}")
    return out


def _train(config: TrainConfig, options: RunOptions, run_dir: str, devices: list, tasks: list[Task],
           splits: dict[str, list[list[dict]]], log, members: tuple[Member, ...] = ()) -> RunResult:
    data = config.data
    train_rows, val_rows = _tagged(splits["train"]), _tagged(splits["validation"])
    if any(not rows for rows in splits["train"]):
        raise TemplateError(f"a task has no training examples: {[len(r) for r in splits['train']]}")
    steps = config.loop.total_steps(len(train_rows), data.batch_size)

    directory = resolve(config.model)
    tokenizer = load_tokenizer(directory)  # checks config.json before load_config reads it
    strategy = make_strategy(options.mesh, devices, load_config(directory).n_layers)
    method = build_method(config.method, tokenizer, tasks[0], steps, n_tasks=len(tasks))
    session = Session.load(directory, tasks[0], method, dtype=config.dtype, remat=config.remat, tokenizer=tokenizer,
                           cache=options.cache, tasks=tuple(tasks) if len(tasks) > 1 else (),
                           shardings=strategy.load_shardings)
    _check_method_fits(config, session)
    train_enc, val_enc = session.encode(train_rows), session.encode(val_rows)
    for i, rows in enumerate(splits["test"]):  # what evaluation will generate must fit, before training
        single, _ = session.task_session(i, None)
        single.encode(rows, with_target=False, new_tokens=single.task.max_new_tokens)
        if config.baseline and single.task.hard_prompt:
            single.encode(rows, hard_prompt=single.task.hard_prompt, with_target=False,
                          new_tokens=single.task.max_new_tokens)
    if members:  # member k starts where a single run with its seed, rate and initialiser would
        inits = {m.init: build_method(dataclasses.replace(config.method, init=m.init), tokenizer, tasks[0], steps,
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
    log(f"model {config.model} ({session.model.num_params() / 1e6:.1f}M params, {config.dtype}), "
        f"task {'+'.join(t.name for t in tasks)}: {len(train_rows)} train / {len(val_rows)} validation / "
        f"{n_test} test, method {method.name} (P={config.method.prompt_length}), {steps} steps on "
        f"{len(devices)} device(s)" + (f" in {jax.process_count()} processes" if jax.process_count() > 1 else "")
        + (f", mesh {options.mesh}" if options.mesh else "")
        + (f"; a population of {len(members)} prompts (seeds {', '.join(str(m.seed) for m in members)}) in one "
           "step" if members else ""))
    if options.resume:
        committed = Checkpointer(run_dir).latest_step()
        log(f"continuing from step {committed}, the last committed checkpoint" if committed is not None
            else "no checkpoint was committed: starting from step 0")
    shared = session.shared_len(train_enc + val_enc) if config.shared_prefix else 0
    t0 = time.perf_counter()
    if config.loss == "choices":
        loss_fn, eval_loss_fn, train_batches, val_batches = _choice_training(config, session, method, train_rows,
                                                                             val_rows, members)
    else:
        train_batches = MemberBatches(train_enc, data.batch_size, session.pad_id, [m.seed for m in members], shared) \
            if members else Batches(train_enc, data.batch_size, session.pad_id, seed=config.seed, shared_len=shared)
        val_batches = [b for _, b in eval_batches(val_enc, data.batch_size, session.pad_id, shared_len=shared)]
        loss_fn = prompt_loss(session.model, method, shared)
        eval_loss_fn = prompt_loss(session.model, method, shared, inference=True)
    result = fit(
        loss_fn, optimizer, prompt, session.frozen, train_batches, val_batches,
        dataclasses.replace(config.loop, steps=steps, eval_every=min(config.loop.eval_every, steps)),
        run_dir=run_dir, resume=options.resume, metadata={"run": info}, strategy=strategy,
        eval_loss_fn=eval_loss_fn,
        micro_batches=data.accumulate, seed=config.seed, progress=options.progress, population=population,
    )
    seconds = time.perf_counter() - t0
    best = load_prompt(run_dir, session, "best", config, steps, members=len(members) or None)
    prompts = [member_prompt(best, k) for k in range(len(members))] if members else [best]
    per_prompt = evaluate_prompts(session, splits["test"], prompts, baseline=config.baseline,
                                  label=f"learned: {config.method.name} P={config.method.prompt_length}")
    results = population_results(per_prompt) if members else per_prompt[0]
    if is_writer():
        plot_curve(result.history, os.path.join(run_dir, CURVE), title=f"{'+'.join(config.tasks)} / {method.name}")
        summary = {"results": [r.summary() for r in results], "samples": {r.label: r.samples for r in results},
                   "best_step": result.best_step, "train_seconds": seconds, "steps": steps, "n_train": len(train_rows)}
        if members:
            summary["members"] = [{**dataclasses.asdict(m), "best_step": result.best_step[k],
                                   "results": [r.members[k].summary() for r in results]}
                                  for k, m in enumerate(members)]
        atomic_write(os.path.join(run_dir, RESULTS), json.dumps(summary, indent=2))
    log("\n" + format_table(results))
    log("\n" + format_samples(results[-1]))
    if members:
        log(f"\n(mean ± sample standard deviation over {len(members)} members; samples of member 0)")
    log(f"\nrun directory: {run_dir}  (curve: {os.path.join(run_dir, CURVE)})")
    return RunResult(run_dir, results, result.history, result.best_step, seconds, len(train_rows), members)



def _check_loss(config: TrainConfig, tasks: list[Task]) -> None:
    plain = [t.name for t in tasks if t.answer != "choice"]
    if config.loss == "choices" and plain:
        raise TemplateError(f"--loss choices needs choice tasks (answer = \"choice\"); {plain[0]!r} is not one: "
                            "use --loss lm")


def _choice_training(config: TrainConfig, session: Session, method: PromptMethod, train_rows: list[dict],
                     val_rows: list[dict], members: tuple[Member, ...]):
    """`--loss choices`: (loss, validation loss, training batches, validation batches) over the
    candidates of choice tasks (choices.py); the validation loss is the same cross-entropy."""
    from jaxprompt.choices import (ChoiceBatches, ChoiceMemberBatches, choice_loss, encode_choices,
                                   eval_choice_batches)

    train, val = encode_choices(session, train_rows), encode_choices(session, val_rows)
    shared = session.shared_len([e.context for e in train + val]) if config.shared_prefix else 0
    B = config.data.batch_size
    batches = ChoiceMemberBatches(train, B, session.pad_id, [m.seed for m in members], shared) if members \
        else ChoiceBatches(train, B, session.pad_id, seed=config.seed, shared_len=shared)
    return (choice_loss(session.model, method, shared), choice_loss(session.model, method, shared, inference=True),
            batches, eval_choice_batches(val, B, session.pad_id, shared))


# ---- reading a run back --------------------------------------------------------------------------

def load_run(run_dir: str, which: str = "best", model: str | None = None, dtype: str | None = None,
             cache: bool | str = True, member: int | None = None) -> tuple[Session, dict, dict]:
    """(session, prompt, run info) of a finished or interrupted run, from its run.json and checkpoint.

    A population's prompt is member `member`'s, or without it every member's, stacked [K, ...]
    (`info["members"]` says whose)."""
    info = read_run_info(run_dir)
    config: TrainConfig = info["config"]
    try:
        tasks = [task_of_spec(spec) for spec in info["tasks"]]
        method = method_from_spec(info["method"])
    except (ValueError, TypeError, KeyError) as e:
        raise RunError(f"{os.path.join(run_dir, RUN_INFO)} describes a task or method this jaxprompt cannot "
                       f"rebuild ({one_line(e)})") from None
    session = Session.load(model or info["model_dir"], tasks[0], method, dtype=dtype or config.dtype, cache=cache,
                           tasks=tuple(tasks) if len(tasks) > 1 else ())
    K = len(info["members"])
    if member is not None and not 0 <= member < max(K, 1):
        raise RunError(f"--member {member}: {run_dir} trained {max(K, 1)} prompt(s); use "
                       + (f"0..{K - 1}" if K > 1 else "0 (or leave --member out)"))
    prompt = load_prompt(run_dir, session, which, config, info["steps"], members=K or None)
    return session, (prompt if member is None or not K else member_prompt(prompt, member)), info


def load_prompt(run_dir: str, session: Session, which: str = "best", config: TrainConfig | None = None,
                steps: int | None = None, members: int | None = None) -> dict:
    """The prompt pytree saved in a run's committed best (or last) checkpoint; best falls back to
    last in a run without validation. Its arrays are not committed to a device: they join the
    frozen weights wherever those lie (one device, or sharded over a mesh). A population of
    `members` prompts: stacked [K, ...], each member's of its own best step."""
    if config is None:
        info = read_run_info(run_dir)
        config, steps = info["config"], info["steps"]
    like_prompt = jax.tree.map(jnp.asarray, host(session.method.init(jax.random.key(0), session.model,
                                                                     session.frozen, session.n_virtual)))
    if members:
        like = stack([TrainState.create(like_prompt, member_optimizer(config.optimizer, like_prompt, steps, 0.0),
                                        jax.random.PRNGKey(0))] * members)
    else:
        optimizer = make_optimizer(config.optimizer, like_prompt, total_steps=steps)
        like = TrainState.create(like_prompt, optimizer, jax.random.PRNGKey(0))
    ckpt = Checkpointer(run_dir)
    if which == "best" and ckpt.best_step() is None:
        which = "last"
    state, _ = ckpt.restore(like, which)
    return jax.tree.map(lambda x: jnp.asarray(np.asarray(x)), state.params)


def plot_curve(history: list[dict], path: str, title: str = "") -> None:
    matplotlib.use("Agg")
    import matplotlib.pyplot as plt  # after choosing the backend

    fig, ax = plt.subplots(figsize=(6, 4))
    for key, name, style in (("train_loss", "train", "-"), ("val_loss", "validation", "o-")):
        points = [(h["step"], np.atleast_1d(h[key])) for h in history if key in h]
        if not points:
            continue
        steps, values = [s for s, _ in points], np.stack([v for _, v in points])  # [steps, members]
        line, = ax.plot(steps, values.mean(axis=1), style, label=name + (" (mean of members)" if values.shape[1] > 1
                                                                        else ""), alpha=0.9)
        if values.shape[1] > 1:  # a population: every member, thin
            ax.plot(steps, values, "-", color=line.get_color(), alpha=0.25, linewidth=0.8)
    ax.set_xlabel("step")
    ax.set_ylabel("target-token NLL (nats)")
    ax.set_title(title)
    ax.legend()
    ax.grid(alpha=0.3)
    fig.tight_layout()
    try:
        atomic_write(path, lambda tmp: fig.savefig(tmp, dpi=100, format="png"))
    finally:
        plt.close(fig)
