"""A prompt-tuning run end to end: load, train, evaluate learned vs written, write the run directory.

Run directory (default `checkpoints/<task>-<method>-<time>`):
    run.json        the TrainConfig and what was loaded
    last/, best/    Orbax train-state checkpoints (the frozen LM is never saved)
    metrics.jsonl   train / validation loss per step
    curve.png       the training curve
    results.json    learned vs written test metrics and sample predictions
"""

from __future__ import annotations

import dataclasses
import json
import math
import os
import sys
import time

import jax
import jax.numpy as jnp
import numpy as np

from jaxprompt.checkpoint import Checkpointer, read_run_info, write_run_info
from jaxprompt.data import Batches, eval_batches
from jaxprompt.evaluate import EvalResult, evaluate, format_samples, format_table
from jaxprompt.loss import prompt_loss
from jaxprompt.optim import OptimizerConfig, make_optimizer
from jaxprompt.prompts import PromptMethod, make_method
from jaxprompt.session import DEFAULT_MODEL, REPO_ROOT, Session
from jaxprompt.tasks import Task, get_task
from jaxprompt.train import LoopConfig, TrainState, fit


@dataclasses.dataclass(frozen=True)
class TrainConfig:
    task: str = "antonyms"
    model: str = DEFAULT_MODEL
    method: str = "soft"  # soft | ptuning | prefix | relaxed | pez
    prompt_length: int = 20
    init: str = "vocab_normal"  # vocab_normal | uniform | sampled_vocab | text
    init_text: str | None = None  # for init=text (default: the task's written prompt)
    encoder: str = "mlp"  # p-tuning encoder: mlp | lstm
    encoder_hidden: int = 128
    prefix_top_layers: int | None = None
    prefix_reparam: int | None = None
    tau_end: float = 0.05  # relaxed prompts
    lr: float = 0.1
    optimizer: str = "adamw"
    schedule: str = "constant"
    warmup_steps: int = 0
    weight_decay: float = 0.0
    clip_norm: float | None = 1.0
    accumulate: int = 1
    steps: int | None = None  # default: `epochs` over the training set
    epochs: float = 3.0
    batch_size: int = 32
    dtype: str = "float32"
    devices: int | None = None  # data-parallel devices (default: all local devices)
    out: str | None = None
    resume: bool = False
    train_examples: int | None = None  # use only the first N training examples (sample efficiency)
    eval_examples: int | None = None  # cap the validation/test sets (speed)
    seed: int = 0
    eval_every: int = 100
    patience: int | None = None
    remat: bool = False
    shared_prefix: bool = True
    baseline: bool = True  # also evaluate the written prompt
    progress: bool = True


def build_method(config: TrainConfig, tokenizer, task: Task) -> PromptMethod:
    """The prompt method a config describes (text init tokenised with the model's tokenizer)."""
    init_ids = ()
    if config.init == "text":
        text = (config.init_text or task.hard_prompt or task.name).strip()
        init_ids = tuple(tokenizer.encode(" " + text))
    common = dict(length=config.prompt_length)
    embedding = dict(init_from=config.init, init_ids=init_ids)
    if config.method == "soft":
        return make_method("soft", **common, **embedding)
    if config.method == "ptuning":
        return make_method("ptuning", **common, **embedding, encoder=config.encoder, hidden=config.encoder_hidden)
    if config.method == "prefix":
        return make_method("prefix", **common, top_layers=config.prefix_top_layers,
                           reparam_hidden=config.prefix_reparam, init_ids=init_ids)
    if config.method == "relaxed":  # train_prompt sets anneal_steps to the run's length
        return make_method("relaxed", **common, **embedding, tau_end=config.tau_end)
    if config.method == "pez":
        return make_method("pez", **common, init_from="sampled_vocab" if config.init == "vocab_normal" else config.init,
                           init_ids=init_ids)
    return make_method(config.method)  # raises the unknown-method error


def optimizer_config(config: TrainConfig, steps: int) -> OptimizerConfig:
    return OptimizerConfig(lr=config.lr, optimizer=config.optimizer, schedule=config.schedule,
                           warmup_steps=config.warmup_steps, total_steps=steps, weight_decay=config.weight_decay,
                           clip_norm=config.clip_norm, accumulate=config.accumulate)


def open_session(config: TrainConfig) -> Session:
    from jaxprompt.models.convert import resolve
    from jaxprompt.tokenizer import Tokenizer

    task = get_task(config.task)
    directory = resolve(config.model)
    tokenizer = Tokenizer.load(directory)
    method = build_method(config, tokenizer, task)
    return Session.load(directory, task, method, dtype=config.dtype, remat=config.remat, tokenizer=tokenizer)


@dataclasses.dataclass
class RunResult:
    run_dir: str
    results: list[EvalResult]
    history: list[dict]
    best_step: int | None
    train_seconds: float
    n_train: int


def train_prompt(config: TrainConfig, log=print) -> RunResult:
    """Trains a prompt as configured, evaluates it (and the written prompt), writes the run directory."""
    session = open_session(config)
    task = session.task
    splits = task.load(seed=config.seed)
    train_rows = splits["train"][:config.train_examples] if config.train_examples else splits["train"]
    cap = lambda rows: rows[:config.eval_examples] if config.eval_examples else rows
    val_rows, test_rows = cap(splits["validation"]) or cap(splits["train"]), cap(splits["test"])
    if not train_rows:
        raise ValueError(f"task {task.name!r} has no training examples")
    devices = jax.local_devices()[: config.devices] if config.devices else jax.local_devices()
    batch_size = config.batch_size
    if batch_size % len(devices):
        raise ValueError(f"batch size {batch_size} is not divisible by {len(devices)} devices")
    steps = config.steps or max(1, math.ceil(config.epochs * len(train_rows) / batch_size))
    run_dir = config.out or os.path.join(REPO_ROOT, "checkpoints",
                                         f"{task.name}-{config.method}-{time.strftime('%Y%m%d-%H%M%S')}")
    method = session.method
    if config.method == "relaxed":  # anneal over the actual run
        method = dataclasses.replace(method, anneal_steps=steps)
        session.method = method

    train_enc = session.encode(train_rows)
    val_enc = session.encode(val_rows)
    prompt = method.init(jax.random.key(config.seed), session.model, session.frozen, session.n_virtual)
    optimizer = make_optimizer(optimizer_config(config, steps), prompt)
    info = {"config": dataclasses.asdict(config), "model_dir": os.path.abspath(session.model_id) if os.path.isdir(
        session.model_id) else session.model_id, "task": _task_spec(task), "steps": steps,
            "n_virtual": session.n_virtual, "method": {"name": method.name, **_method_fields(method)},
            "jaxprompt": __import__("jaxprompt").__version__}
    write_run_info(run_dir, info)
    log(f"model {config.model} ({session.model.num_params() / 1e6:.1f}M params, {config.dtype}), "
        f"task {task.name}: {len(train_rows)} train / {len(val_rows)} validation / {len(test_rows)} test, "
        f"method {method.name} (P={config.prompt_length}), {steps} steps on {len(devices)} device(s)")
    shared = session.shared_len(train_enc + val_enc) if config.shared_prefix else 0
    t0 = time.perf_counter()
    result = fit(
        prompt_loss(session.model, method, shared), optimizer, prompt, session.frozen,
        Batches(train_enc, batch_size, session.pad_id, seed=config.seed, shared_len=shared),
        [b for _, b in eval_batches(val_enc, batch_size, session.pad_id, shared_len=shared)],
        LoopConfig(steps=steps, seed=config.seed, eval_every=min(config.eval_every, steps), patience=config.patience,
                   progress=config.progress), run_dir=run_dir, resume=config.resume, metadata={"run": info},
        devices=devices,
    )
    seconds = time.perf_counter() - t0
    best = load_prompt(run_dir, session, which="best")
    results = []
    if config.baseline and task.hard_prompt:
        results.append(evaluate(session, None, test_rows, hard_prompt=task.hard_prompt,
                                label=f"written: {task.hard_prompt!r}"))
    results.append(evaluate(session, best, test_rows, label=f"learned: {method.name} P={config.prompt_length}"))
    plot_curve(result.history, os.path.join(run_dir, "curve.png"), title=f"{task.name} / {method.name}")
    with open(os.path.join(run_dir, "results.json"), "w") as f:
        json.dump({"results": [r.summary() for r in results], "samples": {r.label: r.samples for r in results},
                   "best_step": result.best_step, "train_seconds": seconds, "steps": steps,
                   "n_train": len(train_rows)}, f, indent=2)
    log("\n" + format_table(results))
    log("\n" + format_samples(results[-1]))
    log(f"\nrun directory: {run_dir}  (curve: {os.path.join(run_dir, 'curve.png')})")
    return RunResult(run_dir, results, result.history, result.best_step, seconds, len(train_rows))


def _task_spec(task: Task) -> dict:
    spec = dataclasses.asdict(task)
    spec["template"], spec["target"] = task.template.text, task.template.target
    return spec


def _method_fields(method: PromptMethod) -> dict:
    return {k: (list(v) if isinstance(v, tuple) else v) for k, v in dataclasses.asdict(method).items()}


def load_run(run_dir: str, which: str = "best", model: str | None = None, dtype: str | None = None
             ) -> tuple[Session, dict, dict]:
    """(session, prompt, run info) of a finished or interrupted run, from its run.json and checkpoint."""
    from jaxprompt.tasks import task_from_dict
    from jaxprompt.tokenizer import Tokenizer

    info = read_run_info(run_dir)
    config = TrainConfig(**info["config"])
    spec = dict(info["task"])
    task = get_task(spec["name"]) if spec["name"] in ("antonyms", "paraphrase") else task_from_dict(spec)
    model_id = model or info["model_dir"]
    from jaxprompt.models.convert import resolve
    directory = resolve(model_id)
    tokenizer = Tokenizer.load(directory)
    method = _restore_method(info["method"])
    session = Session.load(directory, task, method, dtype=dtype or config.dtype, tokenizer=tokenizer)
    return session, load_prompt(run_dir, session, which, config, info["steps"]), info


def _restore_method(spec: dict) -> PromptMethod:
    spec = dict(spec)
    name = spec.pop("name")
    return make_method(name, **{k: (tuple(v) if isinstance(v, list) else v) for k, v in spec.items()})


def load_prompt(run_dir: str, session: Session, which: str = "best", config: TrainConfig | None = None,
                steps: int | None = None) -> dict:
    """The prompt pytree saved in a run's best (or last) checkpoint."""
    if config is None:
        info = read_run_info(run_dir)
        config, steps = TrainConfig(**info["config"]), info["steps"]
    like_prompt = session.method.init(jax.random.key(0), session.model, session.frozen, session.n_virtual)
    optimizer = make_optimizer(optimizer_config(config, steps or 1), like_prompt)
    like = TrainState.create(like_prompt, optimizer, jax.random.PRNGKey(0))
    ckpt = Checkpointer(run_dir)
    try:
        if which == "best" and ckpt.best_step() is None:
            which = "last"
        state, _ = ckpt.restore(like, which)
    finally:
        ckpt.close()
    return state.params


def plot_curve(history: list[dict], path: str, title: str = "") -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    train = [(h["step"], h["train_loss"]) for h in history if "train_loss" in h]
    val = [(h["step"], h["val_loss"]) for h in history if "val_loss" in h]
    fig, ax = plt.subplots(figsize=(6, 4))
    if train:
        ax.plot(*zip(*train), label="train", alpha=0.8)
    if val:
        ax.plot(*zip(*val), "o-", label="validation")
    ax.set_xlabel("step")
    ax.set_ylabel("target-token NLL (nats)")
    ax.set_title(title)
    ax.legend()
    ax.grid(alpha=0.3)
    fig.tight_layout()
    fig.savefig(path, dpi=100)
    plt.close(fig)
