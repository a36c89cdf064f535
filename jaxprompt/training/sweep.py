"""Hyper-parameter search with Optuna: prompt length, learning rate, initialiser and seed; one
training run per trial (or per population of trials), the lowest validation loss wins.

Trials that share a prompt length share every array shape, so up to `population` of them train
at once as one population (population.py: one compiled step, each trial a member with its own
rate, initialiser and seed, all on one data split); different lengths run one after another.
A member trains exactly what the trial's own run would (to float32 rounding), so batching trials
changes the sweep's cost, not its answer.
"""

from __future__ import annotations

import os
import tempfile
from itertools import product

import optuna

from jaxprompt.config import Member, RunOptions, TrainConfig
from jaxprompt.training.run import train_prompt


def _best_val(history: list[dict], k: int | None) -> float:
    vals = [h["val_loss"] if k is None else h["val_loss"][k] for h in history if "val_loss" in h and h["step"] > 0]
    return min(vals, default=float("inf"))


def sweep_prompt_length(base: TrainConfig, lengths: tuple[int, ...] | list[int], trials: int,
                        sweep_dir: str | None = None, options: RunOptions = RunOptions(progress=False),
                        log=lambda *a: None, lrs: tuple[float, ...] = (), inits: tuple[str, ...] = (),
                        seeds: tuple[int, ...] = (), population: int = 1) -> tuple[int, str]:
    """Trains one prompt per Optuna trial (length drawn from `lengths`, learning rate from `lrs`,
    initialiser from `inits`, seed from `seeds`; each defaults to `base`'s), minimising validation
    loss. With `population` > 1, up to that many trials of one length train together.

    A single trial is a run directory `trial<i>-P<length>` under `sweep_dir`, a population of trials
    `trials<i>+<j>+...-P<length>` (member k is the k-th trial named). Returns the best length and a
    table of the trials. A failing trial stops the sweep with its own error (Optuna's "Trial failed"
    report is silenced: the error says it once).
    """
    optuna.logging.set_verbosity(optuna.logging.ERROR)
    root = sweep_dir if sweep_dir is not None else tempfile.mkdtemp(prefix="jaxprompt-sweep-")
    space = {"prompt_length": list(lengths), "lr": list(lrs or (base.optimizer.lr,)),
             "init": list(inits or (base.method.default_of("init_from"),)), "seed": list(seeds or (base.seed,))}
    points = [dict(zip(space, values)) for values in product(*space.values())]
    grid = trials >= len(points)
    study = optuna.create_study(direction="minimize", sampler=optuna.samplers.TPESampler(seed=base.seed))
    if grid:  # every point once, in order (queued: Optuna's GridSampler cannot be asked ahead of results)
        for point in points:
            study.enqueue_trial(point)
    distributions = {name: optuna.distributions.CategoricalDistribution(values) for name, values in space.items()}
    remaining = len(points) if grid else trials
    while remaining:
        # a round: enough trials that every length can fill a population; trained length by length
        asked = [study.ask(distributions) for _ in range(min(remaining, population * len(lengths)))]
        remaining -= len(asked)
        by_length: dict[int, list] = {}
        for trial in asked:
            by_length.setdefault(trial.params["prompt_length"], []).append(trial)
        for length, group in by_length.items():
            for start in range(0, len(group), population):
                _train_trials(base, length, group[start:start + population], root, options, log, study)
    lines = [f"{'trial':<6}{'length':<8}{'lr':<10}{'init':<15}{'seed':<6}{'val_loss':<10}{'test_loss':<10}exact_match"]
    for t in sorted(study.trials, key=lambda t: t.number):
        p = t.params
        lines.append(f"{t.number:<6}{p['prompt_length']:<8}{p['lr']:<10g}{p['init']:<15}{p['seed']:<6}"
                     f"{t.value:<10.4f}{t.user_attrs['test_loss']:<10.4f}{t.user_attrs['exact_match']}")
    return int(study.best_params["prompt_length"]), "\n".join(lines)


def _train_trials(base: TrainConfig, length: int, trials: list, root: str, options: RunOptions, log, study) -> None:
    """One run for `trials` of one prompt length (a population of them, if several); tells Optuna
    each trial's best validation loss."""
    config = base.replace(prompt_length=length, baseline=False)
    try:
        if len(trials) == 1:
            (trial,) = trials
            p = trial.params
            name = f"trial{trial.number}-P{length}"
            run = train_prompt(config.replace(lr=p["lr"], init=p["init"], seed=p["seed"], split_seed=base.data_seed),
                               options.replace(out=os.path.join(root, name)), log=log)
            outcomes = [(_best_val(run.history, None), run.results[-1])]
        else:
            members = tuple(Member(t.params["seed"], t.params["lr"], t.params["init"]) for t in trials)
            name = f"trials{'+'.join(str(t.number) for t in trials)}-P{length}"
            run = train_prompt(config.replace(seeds=len(members), split_seed=base.data_seed),
                               options.replace(out=os.path.join(root, name)), log=log, members=members)
            outcomes = [(_best_val(run.history, k), run.results[-1].members[k]) for k in range(len(trials))]
    except BaseException:
        for trial in trials:
            study.tell(trial, state=optuna.trial.TrialState.FAIL)
        raise
    for trial, (val, result) in zip(trials, outcomes):
        trial.set_user_attr("run_dir", run.run_dir)
        trial.set_user_attr("test_loss", result.loss)
        trial.set_user_attr("exact_match", result.exact_match)
        study.tell(trial, val)
