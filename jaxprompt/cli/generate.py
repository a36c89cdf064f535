"""`jaxprompt generate`: generate with a trained prompt, from --text or stdin lines."""

from __future__ import annotations

import dataclasses
import sys

from jaxprompt.cli.base import CLIError, Command, settings
from jaxprompt.cli.trained import RUN_DIR, LoadOptions
from jaxprompt.cli.trained import load as _load
from jaxprompt.cli.trained import task_sessions as _task_sessions
from jaxprompt.settings import AT_LEAST_0, AT_LEAST_1, Range, Settings, setting


@dataclasses.dataclass(frozen=True)
class GenerateOptions(Settings):
    text: tuple[str, ...] = setting((), "an input: a value, 'field=value;...' or JSON (repeatable)", repeat=True,
                                     shown_default="lines on stdin")
    max_new_tokens: int | None = setting(None, "tokens to generate", range=AT_LEAST_1, shown_default="the task's")
    temperature: float = setting(0.0, "sampling temperature (0: greedy)", range=AT_LEAST_0)
    top_k: int = setting(0, "sample among the k most likely tokens (0: all)", range=AT_LEAST_0)
    top_p: float = setting(1.0, "sample from the smallest set of tokens with this much probability",
                           range=Range(0, 1, low_open=True))
    seed: int = setting(0, "sampling seed", range=AT_LEAST_0)
    task: str | None = setting(None, "multi-task runs: the task whose prompt to use")


def cmd_generate(args) -> int:
    from jaxprompt.inference.engine import Engine
    from jaxprompt.inference.requests import Options, Request, parse_input

    opts = settings(args, GenerateOptions)
    session, prompt, _ = _load(args)
    if len(session.all_tasks) > 1 and opts.task is None:
        raise CLIError(f"this run has several tasks ({', '.join(t.name for t in session.all_tasks)}): "
                       "choose one with --task")
    session, prompt = _task_sessions(session, prompt, opts.task)[0]
    texts = [t for t in (opts.text if opts.text else sys.stdin.read().splitlines()) if t.strip()]
    rows = [parse_input(session.task, text) for text in texts]
    if not rows:
        raise CLIError("no input: pass --text or lines on stdin")
    n_new = opts.max_new_tokens if opts.max_new_tokens is not None else session.task.max_new_tokens
    options = Options(max_tokens=n_new, temperature=opts.temperature, top_p=opts.top_p, top_k=opts.top_k,
                      seed=opts.seed)
    engine = Engine.of_session(session)
    engine.add("run", session, prompt)
    completions = engine.complete([Request("run", row=row, options=options, key=j) for j, row in enumerate(rows)])
    for row, completion in zip(rows, completions):  # the input as the model reads it, then what it wrote
        print(f"{session.task.template.render_hard(row, '[prompt]')} -> {completion.text.strip()!r}")
    return 0


GENERATE = Command("generate", "generate with a trained prompt, from --text or stdin lines", cmd_generate,
                   options=(LoadOptions, GenerateOptions), arguments=(RUN_DIR,))
