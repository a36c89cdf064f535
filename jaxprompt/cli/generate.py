"""`jaxprompt generate`: generate with a trained prompt, from --text or stdin lines."""

from __future__ import annotations

import dataclasses
import sys

from jaxprompt.cli.base import CLIError, Command, given, settings
from jaxprompt.cli.trained import RUN_DIR, LoadOptions
from jaxprompt.cli.trained import load as _load
from jaxprompt.cli.trained import task_sessions as _task_sessions
from jaxprompt.inference.sampling import Sampling
from jaxprompt.settings import Settings, setting

# the sampling settings this command takes (log-probabilities are not printed)
SAMPLING_FLAGS = ("max_new_tokens", "temperature", "top_p", "top_k", "seed", "stop")


@dataclasses.dataclass(frozen=True)
class GenerateOptions(Settings):
    text: tuple[str, ...] = setting((), "an input: a value, 'field=value;...' or JSON (repeatable)", repeat=True,
                                     shown_default="lines on stdin")
    task: str | None = setting(None, "multi-task runs: the task whose prompt to use")


def cmd_generate(args) -> int:
    from jaxprompt.inference.engine import Engine
    from jaxprompt.inference.requests import Request, parse_input

    opts = settings(args, GenerateOptions)
    sampling = settings(args, Sampling)  # checked before anything is loaded
    session, prompt, _ = _load(args)
    if len(session.all_tasks) > 1 and opts.task is None:
        raise CLIError(f"this run has several tasks ({', '.join(t.name for t in session.all_tasks)}): "
                       "choose one with --task")
    session, prompt = _task_sessions(session, prompt, opts.task)[0]
    texts = [t for t in (opts.text if opts.text else sys.stdin.read().splitlines()) if t.strip()]
    rows = [parse_input(session.task, text) for text in texts]
    if not rows:
        raise CLIError("no input: pass --text or lines on stdin")
    if "max_new_tokens" not in given(args, Sampling):  # the task's own length unless asked
        sampling = dataclasses.replace(sampling, max_tokens=session.task.max_new_tokens)
    engine = Engine.of_session(session)
    engine.add("run", session, prompt)
    completions = engine.complete([Request("run", row=row, sampling=sampling, key=j) for j, row in enumerate(rows)])
    for row, completion in zip(rows, completions):  # the input as the model reads it, then what it wrote
        print(f"{session.task.template.render_hard(row, '[prompt]')} -> {completion.text.strip()!r}")
    return 0


GENERATE = Command("generate", "generate with a trained prompt, from --text or stdin lines", cmd_generate,
                   options=(LoadOptions, (Sampling, SAMPLING_FLAGS), GenerateOptions), arguments=(RUN_DIR,))
