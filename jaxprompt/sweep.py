"""Prompt-length search with Optuna (the seed write-up tuned the length with Optuna)."""

from __future__ import annotations

import dataclasses
import os
import tempfile


def sweep_prompt_length(base, lengths: list[int], trials: int, sweep_dir: str | None = None,
                        log=lambda *a: None) -> tuple[int, str]:
    """Trains one prompt per Optuna trial (length drawn from `lengths`), minimising validation loss.

    Returns the best length and a table of the trials.
    """
    import optuna

    from jaxprompt.run import train_prompt

    optuna.logging.set_verbosity(optuna.logging.WARNING)
    root = sweep_dir or tempfile.mkdtemp(prefix="jaxprompt-sweep-")
    sampler = optuna.samplers.GridSampler({"prompt_length": lengths}) if trials >= len(lengths) \
        else optuna.samplers.TPESampler(seed=base.seed)
    study = optuna.create_study(direction="minimize", sampler=sampler)

    def objective(trial):
        length = trial.suggest_categorical("prompt_length", lengths)
        config = dataclasses.replace(base, prompt_length=length, baseline=False,
                                     out=os.path.join(root, f"trial{trial.number}-P{length}"))
        run = train_prompt(config, log=log)
        val = min((h["val_loss"] for h in run.history if "val_loss" in h and h["step"] > 0), default=float("inf"))
        trial.set_user_attr("test_loss", run.results[-1].loss)
        trial.set_user_attr("exact_match", run.results[-1].exact_match)
        return val

    study.optimize(objective, n_trials=min(trials, len(lengths)) if trials >= len(lengths) else trials)
    lines = [f"{'trial':<6}{'length':<8}{'val_loss':<10}{'test_loss':<10}exact_match"]
    for t in study.trials:
        lines.append(f"{t.number:<6}{t.params['prompt_length']:<8}{t.value:<10.4f}"
                     f"{t.user_attrs['test_loss']:<10.4f}{t.user_attrs['exact_match']}")
    return int(study.best_params["prompt_length"]), "\n".join(lines)
