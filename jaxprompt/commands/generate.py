"""`jaxprompt generate`: generate with a trained prompt, from --text or stdin lines."""

from __future__ import annotations

import dataclasses
import json
import sys

from jaxprompt.commands.base import CLIError, Command, settings
from jaxprompt.commands.trained import RUN_DIR, LoadOptions
from jaxprompt.commands.trained import load as _load
from jaxprompt.commands.trained import task_sessions as _task_sessions
from jaxprompt.settings import AT_LEAST_0, AT_LEAST_1, Range, Settings, setting


@dataclasses.dataclass(frozen=True)
class GenerateOptions(Settings):
    text: tuple[str, ...] = setting((), "an input: a value, 'field=value;...' or JSON (repeatable; default: "
                                        "lines on stdin)", repeat=True)
    max_new_tokens: int | None = setting(None, "tokens to generate (default: the task's)", range=AT_LEAST_1)
    temperature: float = setting(0.0, "sampling temperature (0: greedy)", range=AT_LEAST_0)
    top_k: int = setting(0, "sample among the k most likely tokens (0: all)", range=AT_LEAST_0)
    top_p: float = setting(1.0, "sample from the smallest set of tokens with this much probability",
                           range=Range(0, 1, low_open=True))
    seed: int = setting(0, "sampling seed", range=AT_LEAST_0)
    task: str | None = setting(None, "multi-task runs: the task whose prompt to use")


def _parse_inputs(session, texts: tuple[str, ...] | list[str]) -> list[dict]:
    """`word1=hot`, a JSON object, or a bare value for the task's single input field."""
    inputs = [f for f in session.task.fields if f not in session.task.template.target_fields]
    rows = []
    for text in texts:
        text = text.strip()
        if not text:
            continue
        if text.startswith("{"):
            try:
                row = json.loads(text)
            except ValueError:
                raise CLIError(f"input {text!r} is not a JSON object") from None
            if not isinstance(row, dict):
                raise CLIError(f"input {text!r} is not a JSON object")
        elif "=" in text and text.split("=", 1)[0] in inputs:
            row = dict(part.split("=", 1) for part in text.split(";") if "=" in part)
        elif len(inputs) == 1:
            row = {inputs[0]: text}
        else:
            raise CLIError(f"give the fields {', '.join(inputs)} as 'field=value;field=value' or JSON")
        missing = [f for f in inputs if f not in row]
        if missing:
            raise CLIError(f"input {text!r} lacks field {missing[0]!r}")
        rows.append({**{f: "" for f in session.task.template.target_fields}, **row})
    return rows


def cmd_generate(args) -> int:
    import jax
    import numpy as np

    from jaxprompt.data import collate
    from jaxprompt.evaluate import inference_form
    from jaxprompt.models.generate import Sampling, generate
    from jaxprompt.prompts.apply import prompt_inputs

    opts = settings(args, GenerateOptions)
    session, prompt, _ = _load(args)
    if len(session.all_tasks) > 1 and opts.task is None:
        raise CLIError(f"this run has several tasks ({', '.join(t.name for t in session.all_tasks)}): "
                       "choose one with --task")
    session, prompt = _task_sessions(session, prompt, opts.task)[0]
    texts = opts.text if opts.text else sys.stdin.read().splitlines()
    rows = _parse_inputs(session, texts)
    if not rows:
        raise CLIError("no input: pass --text or lines on stdin")
    n_new = opts.max_new_tokens if opts.max_new_tokens is not None else session.task.max_new_tokens
    encoded = session.encode(rows, with_target=False, new_tokens=n_new)
    method, serving = inference_form(session, prompt)
    batch = collate(encoded, session.pad_id, padding="left")
    inputs = prompt_inputs(session.model, session.frozen, method, serving, batch)
    tokens, _ = generate(session.model, session.frozen, inputs.embeds, batch["mask"], max_new_tokens=n_new,
                         sampling=Sampling(opts.temperature, opts.top_k, opts.top_p), rng=jax.random.key(opts.seed),
                         eos_token_id=session.tokenizer.eos_token_id, prefix=inputs.prefix, adapter=inputs.adapter)
    for row, out in zip(rows, np.asarray(tokens)):
        ids = list(out)
        if session.tokenizer.eos_token_id in ids:
            ids = ids[: ids.index(session.tokenizer.eos_token_id)]
        print(f"{session.task.template.render_hard(row, '[prompt]')}{session.tokenizer.decode(ids)}")
    return 0


GENERATE = Command("generate", "generate with a trained prompt, from --text or stdin lines", cmd_generate,
                   options=(LoadOptions, GenerateOptions), arguments=(RUN_DIR,))
