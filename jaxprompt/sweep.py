"""Prompt-length search with Optuna: one training run per trial, the lowest validation loss wins."""

from __future__ import annotations

import os
import tempfile

import optuna

from jaxprompt.config import RunOptions, TrainConfig
from jaxprompt.run import train_prompt


def sweep_prompt_length(base: TrainConfig, lengths: tuple[int, ...] | list[int], trials: int,
                        sweep_dir: str | None = None, options: RunOptions = RunOptions(progress=False),
                        log=lambda *a: None) -> tuple[int, str]:
    """Trains one prompt per Optuna trial (length drawn from `lengths`), minimising validation loss.

    Each trial is a run directory `trial<i>-P<length>` under `sweep_dir`. Returns the best length
    and a table of the trials. A failing trial stops the sweep with its own error (Optuna's
    "Trial failed" report is silenced: the error says it once).
    """
    optuna.logging.set_verbosity(optuna.logging.ERROR)
    root = sweep_dir if sweep_dir is not None else tempfile.mkdtemp(prefix="jaxprompt-sweep-")
    grid = trials >= len(lengths)
    sampler = optuna.samplers.GridSampler({"prompt_length": list(lengths)}) if grid \
        else optuna.samplers.TPESampler(seed=base.seed)
    study = optuna.create_study(direction="minimize", sampler=sampler)

    def objective(trial):
        length = trial.suggest_categorical("prompt_length", list(lengths))
        config = base.replace(prompt_length=length, baseline=False)
        run = train_prompt(config, options.replace(out=os.path.join(root, f"trial{trial.number}-P{length}")),
                           log=log)
        val = min((h["val_loss"] for h in run.history if "val_loss" in h and h["step"] > 0), default=float("inf"))
        trial.set_user_attr("run_dir", run.run_dir)
        trial.set_user_attr("test_loss", run.results[-1].loss)
        trial.set_user_attr("exact_match", run.results[-1].exact_match)
        return val

    study.optimize(objective, n_trials=len(lengths) if grid else trials)
    lines = [f"{'trial':<6}{'length':<8}{'val_loss':<10}{'test_loss':<10}exact_match"]
    for t in study.trials:
        lines.append(f"{t.number:<6}{t.params['prompt_length']:<8}{t.value:<10.4f}"
                     f"{t.user_attrs['test_loss']:<10.4f}{t.user_attrs['exact_match']}")
    return int(study.best_params["prompt_length"]), "\n".join(lines)
