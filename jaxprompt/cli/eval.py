"""`jaxprompt eval`: evaluate a trained prompt (and the written prompt) on a split."""

from __future__ import annotations

import dataclasses
import json

from jaxprompt.cli.base import Command, settings
from jaxprompt.cli.trained import RUN_DIR, LoadOptions, load, writable_file
from jaxprompt.settings import AT_LEAST_1, Settings, setting


@dataclasses.dataclass(frozen=True)
class EvalOptions(Settings):
    split: str = setting("test", "split to evaluate", choices=("train", "validation", "test"))
    examples: int | None = setting(None, "evaluate the first N examples", range=AT_LEAST_1, shown_default="all")
    baseline: bool = setting(True, "also evaluate the written prompt")
    json: str | None = setting(None, "also write the metrics to this file")


def cmd_eval(args) -> int:
    from jaxprompt.evaluation.evaluate import evaluate_prompts
    from jaxprompt.evaluation.results import format_samples, format_table, learned_label, population_results
    from jaxprompt.files import atomic_write
    from jaxprompt.runs.load import member_of

    opts = settings(args, EvalOptions)
    writable_file("--json", opts.json)
    session, prompt, info = load(args, every_member=True)
    load_options = settings(args, LoadOptions)
    K = len(info["members"]) if load_options.member is None else 0  # every member of a population
    rows_per_task = []
    for task in session.all_tasks:
        rows = task.load(seed=info["config"].data_seed)[opts.split]
        rows_per_task.append(rows[: opts.examples] if opts.examples is not None else rows)
    prompts = [member_of(prompt, k) for k in range(K)] if K else [prompt]
    method = info["config"].method
    label = learned_label(method.name, method.length, load_options.which, load_options.member)
    per_prompt = evaluate_prompts(session, rows_per_task, prompts, label=label, baseline=opts.baseline)
    results = population_results(per_prompt) if K else per_prompt[0]
    print(format_table(results))
    print()
    print(format_samples(results[-1]))
    if K:
        print(f"\n(mean ± sample standard deviation over {K} members; samples of member 0)")
    if opts.json is not None:
        atomic_write(opts.json, json.dumps({"results": [r.summary() for r in results]}, indent=2))
    return 0


EVAL = Command("eval", "evaluate a trained prompt (and the written prompt) on a split", cmd_eval,
               options=(LoadOptions, EvalOptions), arguments=(RUN_DIR,))
