"""What the commands on a trained run share (eval | generate | inspect | export): which prompt of
the run (`LoadOptions`), loading it, and its per-task sessions."""

from __future__ import annotations

import dataclasses
import os

from jaxprompt.cli.base import CLIError, settings
from jaxprompt.config import QUANTIZE, QUANTIZE_HELP
from jaxprompt.settings import AT_LEAST_0, Settings, setting

RUN_DIR = ("run_dir", "a run directory (from `jaxprompt train` or `jaxprompt import`)")


@dataclasses.dataclass(frozen=True)
class LoadOptions(Settings):
    """Which trained prompt of a run, on which weights (eval | generate | inspect | export)."""

    which: str = setting("best", "checkpoint", choices=("best", "last"))
    member: int | None = setting(None, "a population's (train --seeds K) member whose prompt to use, 0..K-1",
                                 shown_default="every member for eval; generate, inspect and export need one",
                                 range=AT_LEAST_0)
    model: str | None = setting(None, "load the frozen model from here instead of the run's")
    quantize: str = setting("run", QUANTIZE_HELP + " (run: as the run trained)", choices=("run", *QUANTIZE))
    cache: bool = setting(True, "keep prompt representations ($JAXPROMPT_CACHE) and compiled programs "
                                "(~/.cache/jaxprompt/xla) on disk")

    @property
    def weights(self) -> str | None:
        """`--quantize` as `load_run` takes it (None: as the run trained)."""
        return None if self.quantize == "run" else self.quantize


def load(args, every_member: bool = False):
    """(session, prompt, info) of the run; of a population, member --member's prompt (or with
    `every_member` and no --member, every member's, stacked)."""
    from jaxprompt.runs.load import load_run

    options = settings(args, LoadOptions)
    session, prompt, info = load_run(args.run_dir, which=options.which, model=options.model, cache=options.cache,
                                     member=options.member, quantize=options.weights)
    K = len(info["members"])
    if K and options.member is None and not every_member:
        raise CLIError(f"{args.run_dir} trained {K} prompts (--seeds {K}): choose one with --member 0..{K - 1}")
    return session, prompt, info


def task_sessions(session, prompt, only: str | None = None):
    """(session, prompt) per task of the run (one for a single-task run)."""
    tasks = session.all_tasks
    if only is not None:
        names = [t.name for t in tasks]
        if only not in names:
            raise CLIError(f"--task {only!r}: this run's tasks are {', '.join(names)}")
        return [session.task_session(names.index(only), prompt)]
    return [session.task_session(i, prompt) for i in range(len(tasks))]


def writable_file(flag: str, path: str | None) -> None:
    if path is not None and os.path.isdir(path):
        raise CLIError(f"{flag} {path} is a directory; give a file name")
