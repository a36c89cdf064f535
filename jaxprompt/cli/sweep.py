"""`jaxprompt sweep`: search the prompt length (and rate, initialisation, seed) with Optuna (sweep.py)."""

from __future__ import annotations

import dataclasses

from jaxprompt.cli.base import CLIError, Command, settings
from jaxprompt.config import RunOptions, TrainConfig
from jaxprompt.prompts.settings import INIT_NAMES
from jaxprompt.settings import AT_LEAST_0, AT_LEAST_1, SettingError, Settings, setting


@dataclasses.dataclass(frozen=True)
class SweepOptions(Settings):
    lengths: tuple[int, ...] = setting((1, 5, 10, 20), "prompt lengths to try, comma-separated", range=AT_LEAST_1)
    trials: int = setting(4, "Optuna trials", range=AT_LEAST_1)
    lrs: tuple[float, ...] = setting((), "learning rates to try, comma-separated", shown_default="--lr",
                                     range=AT_LEAST_0)
    inits: tuple[str, ...] = setting((), "prompt initialisations to try, comma-separated", shown_default="--init",
                                     choices=INIT_NAMES)
    trial_seeds: tuple[int, ...] = setting((), "seeds to try, comma-separated (all trials share --seed's data "
                                               "split)", shown_default="--seed", range=AT_LEAST_0)
    population: int = setting(1, "train up to N trials of one prompt length at once, as one population (one "
                                 "compiled step; each its own rate, initialisation and seed)", range=AT_LEAST_1)
    sweep_dir: str | None = setting(None, "directory of the trial runs", shown_default="a new temporary directory")

    def check(self) -> None:
        if not self.lengths:
            raise SettingError("--lengths: give at least one prompt length")


def cmd_sweep(args) -> int:
    from jaxprompt.training.sweep import sweep_prompt_length

    options = settings(args, RunOptions)
    if options.out is not None or options.resume:
        raise CLIError("sweep writes one run per trial under --sweep-dir: --out and --resume do not apply")
    sweep = settings(args, SweepOptions)
    base = settings(args, TrainConfig)
    if base.seeds != 1:
        raise CLIError("sweep trains one prompt per trial: --seeds does not apply (search seeds with --trial-seeds, "
                       "train trials together with --population)")
    best, table = sweep_prompt_length(base, sweep.lengths, sweep.trials, sweep.sweep_dir, options, lrs=sweep.lrs,
                                      inits=sweep.inits, seeds=sweep.trial_seeds, population=sweep.population)
    print(table)
    print(f"best prompt length: {best}")
    return 0


SWEEP = Command("sweep", "search the prompt length (and rate, initialisation, seed) with Optuna; trials of one "
                         "length can train together; reports the best length", cmd_sweep,
                options=(TrainConfig, RunOptions, SweepOptions))
