"""`jaxprompt train`: train a prompt (its settings are jaxprompt/config.py's `TrainConfig` and `RunOptions`)."""

from __future__ import annotations

from jaxprompt.cli.base import CLIError, Command, given, interrupt_note, settings
from jaxprompt.config import RunOptions, TrainConfig
from jaxprompt.settings import build


def cmd_train(args) -> int:
    from jaxprompt.runs.layout import check_run_dir, differences, read_run_info
    from jaxprompt.training.run import train_prompt

    options = settings(args, RunOptions)
    config = settings(args, TrainConfig)
    if options.resume:
        if options.out is None:
            raise CLIError("--resume needs --out RUN_DIR: the run to continue")
        check_run_dir(options.out, resume=True)
        stored = read_run_info(options.out)["config"]
        explicit = build(TrainConfig, given(args, TrainConfig), stored)
        if explicit != stored:
            raise CLIError(f"{differences(explicit, stored)[0]} in {options.out}: --resume continues the run with its "
                           "stored settings (drop the flag, or replace the run with --overwrite)")
        config = stored

    def started(run_dir: str) -> None:
        interrupt_note["text"] = (f"; {run_dir} keeps its last committed checkpoint "
                                  f"(continue with: jaxprompt train --out {run_dir} --resume)")

    train_prompt(config, options, started=started)  # names the default run directory (process 0's clock)
    return 0


TRAIN = Command("train", "train a prompt on a task and compare it with the written prompt", cmd_train,
                options=(TrainConfig, RunOptions))
