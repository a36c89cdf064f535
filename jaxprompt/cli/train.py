"""`jaxprompt train`: train a prompt (its settings are jaxprompt/config.py's `TrainConfig` and `RunOptions`)."""

from __future__ import annotations

import shlex
import sys

from jaxprompt.cli.base import CLIError, Command, ending_note, given, settings
from jaxprompt.config import RunOptions, TrainConfig
from jaxprompt.parallel.preemption import Stopped
from jaxprompt.settings import build


def cmd_train(args) -> int:
    from jaxprompt.runs.checkpoint import read_record
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

    run_dir = None

    def started(directory: str) -> None:
        nonlocal run_dir
        run_dir = directory

        def note() -> str:
            step = read_record(directory)["last"][-1:]
            kept = f"step {step[0]}, its last committed checkpoint" if step else "no checkpoint yet"
            return f"; {directory} keeps {kept} (continue with: {resume_command(directory)})"

        ending_note["note"] = note

    try:
        train_prompt(config, options, started=started)  # names the default run directory (process 0's clock)
    except Stopped as stop:
        print(f"jaxprompt train: {stop.cause}: stopped at step {stop.step} and committed its checkpoint in {run_dir} "
              f"(continue with: {resume_command(run_dir)})", file=sys.stderr)
        return stop.exit_code
    return 0


def resume_command(run_dir: str) -> str:
    """The command that continues a run (its settings are in its run.json; in a multi-process run,
    each process adds its --coordinator/--num-processes/--process-id, any number of processes)."""
    return f"jaxprompt train --out {shlex.quote(run_dir)} --resume"


TRAIN = Command("train", "train a prompt on a task and compare it with the written prompt", cmd_train,
                options=(TrainConfig, RunOptions))
