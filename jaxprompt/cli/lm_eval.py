"""`jaxprompt lm-eval`: lm-evaluation-harness tasks on a run's learned prompt (or its model alone)."""

from __future__ import annotations

import dataclasses
import json
import os

from jaxprompt.cli.base import CLIError, Command, settings
from jaxprompt.cli.trained import RUN_DIR, LoadOptions
from jaxprompt.settings import AT_LEAST_0, AT_LEAST_1, Settings, setting


@dataclasses.dataclass(frozen=True)
class LmEvalOptions(Settings):
    tasks: tuple[str, ...] = setting((), "lm-eval task names, comma-separated (required)")
    include_path: str | None = setting(None, "a directory of extra lm-eval task YAML files")
    limit: int | None = setting(None, "at most N examples per task", range=AT_LEAST_1, shown_default="all")
    num_fewshot: int | None = setting(None, "few-shot examples", range=AT_LEAST_0, shown_default="the task's")
    batch_size: int = setting(16, "contexts scored per batch", range=AT_LEAST_1)
    bare: bool = setting(False, "the run's model without its prompt")
    apply_chat_template: bool = setting(False, "render each request with the model's chat template, as lm-eval's "
                                               "--apply_chat_template (the prompt placed before the conversation)")


def cmd_lm_eval(args) -> int:
    from jaxprompt.evaluation.lm_eval import JaxPromptLM, require_lm_eval, run_lm_eval
    from jaxprompt.files import atomic_write
    from jaxprompt.runs.load import load_run

    opts = settings(args, LmEvalOptions)
    if not opts.tasks:
        raise CLIError("--tasks: give at least one lm-eval task name (e.g. --tasks hellaswag,arc_easy)")
    require_lm_eval()
    if opts.include_path is not None and not os.path.isdir(opts.include_path):
        raise CLIError(f"--include-path {opts.include_path} is not a directory")
    load = settings(args, LoadOptions)
    session, prompt, info = load_run(args.run_dir, which=load.which, model=load.model, cache=load.cache,
                                     member=load.member, quantize=load.weights)
    if info["members"] and load.member is None and not opts.bare:
        raise CLIError(f"{args.run_dir} trained {len(info['members'])} prompts (--seeds): choose one with --member "
                       f"0..{len(info['members']) - 1}")
    lm = JaxPromptLM(session, prompt, batch_size=opts.batch_size, learned=not opts.bare)
    results = run_lm_eval(lm, list(opts.tasks), opts.include_path, opts.limit, opts.num_fewshot,
                          apply_chat_template=opts.apply_chat_template)
    from lm_eval.utils import make_table

    print(make_table(results))
    name = "lm_eval" + ("_bare" if opts.bare else "") + ("_chat" if opts.apply_chat_template else "")
    path = os.path.join(args.run_dir, f"{name}.json")
    atomic_write(path, json.dumps({k: results[k] for k in ("results", "versions", "n-shot", "configs")
                                   if k in results}, indent=2, default=str))
    print(f"lm-eval results: {path}")
    return 0


LM_EVAL = Command("lm-eval", "lm-evaluation-harness tasks on a trained prompt (pip install 'jaxprompt[eval]')",
                  cmd_lm_eval, options=(LoadOptions, LmEvalOptions), arguments=(RUN_DIR,))
