"""`jaxprompt inspect`: nearest vocabulary tokens of each prompt vector; embedding-space plot."""

from __future__ import annotations

import dataclasses

from jaxprompt.cli.base import CLIError, Command, settings
from jaxprompt.cli.trained import RUN_DIR, LoadOptions, load, task_sessions, writable_file
from jaxprompt.settings import AT_LEAST_0, AT_LEAST_1, Settings, setting


@dataclasses.dataclass(frozen=True)
class InspectOptions(Settings):
    top: int = setting(5, "nearest vocabulary tokens shown per prompt vector", range=AT_LEAST_1)
    plot: str | None = setting(None, "write a PCA plot of vocabulary and prompt vectors (PNG) here")
    evaluate: int = setting(0, "evaluate the prompt projected to its nearest tokens on N test examples "
                               "(0: no)", range=AT_LEAST_0)


def cmd_inspect(args) -> int:
    from jaxprompt.evaluation.evaluate import evaluate
    from jaxprompt.evaluation.interpret import (
        format_neighbours,
        nearest_vocabulary,
        plot_embedding_space,
        projected_prompt,
        prompt_vectors,
    )
    from jaxprompt.evaluation.results import format_table

    opts = settings(args, InspectOptions)
    writable_file("--plot", opts.plot)
    session, prompt, info = load(args)
    if not session.method.takes_positions:
        raise CLIError(f"{args.run_dir} trained {session.method.name} prompts, which are not token embeddings: "
                       "inspect compares a prompt's vectors with the vocabulary (soft, ptuning, relaxed, pez)")
    for single, task_prompt in task_sessions(session, prompt):
        if len(session.all_tasks) > 1:
            print(f"== task {single.task.name}")
        vectors = prompt_vectors(single, task_prompt)
        table = single.model.embedding_table(single.frozen)
        for metric in ("cosine", "l2"):
            print(f"nearest vocabulary tokens by {metric}:")
            print(format_neighbours(nearest_vocabulary(vectors, table, single.tokenizer, metric, opts.top)))
            print()
        if opts.plot is not None:
            plot_embedding_space(vectors, table, opts.plot, single.tokenizer)
            print(f"embedding-space plot: {opts.plot}")
        if opts.evaluate:
            soft, hard, _, text = projected_prompt(single, task_prompt)
            print(f"projected hard prompt: {text!r}")
            rows = single.task.load(seed=info["config"].data_seed)["test"][: opts.evaluate]
            learned = evaluate(single, task_prompt, rows, label="learned (continuous)")
            projected = evaluate(dataclasses.replace(single, method=soft), hard, rows, label="projected to tokens")
            print(format_table([learned, projected]))
    return 0


INSPECT = Command("inspect", "nearest vocabulary tokens of each prompt vector; embedding-space plot", cmd_inspect,
                  options=(LoadOptions, InspectOptions), arguments=(RUN_DIR,))
