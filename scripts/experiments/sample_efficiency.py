"""Sample efficiency: a prompt trained on 100 examples vs on all of them (same steps, same test set).

    python scripts/experiments/sample_efficiency.py --task antonyms --steps 300

Each size is a run directory under --out (replaced when the script runs again).
"""

from __future__ import annotations

import argparse
import json

from jaxprompt.config import RunOptions, TrainConfig
from jaxprompt.evaluation.results import EvalResult, format_table
from jaxprompt.paths import DEFAULT_MODEL
from jaxprompt.training.run import train_prompt


def run(task: str = "antonyms", model: str = DEFAULT_MODEL, steps: int = 300, sizes: str = "100,all",
        prompt_length: int = 20, eval_examples: int | None = None, out: str = "checkpoints/sample-efficiency"
        ) -> list[EvalResult]:
    """The written prompt's result, then the learned prompt's for each training-set size."""
    results: list[EvalResult] = []
    for size in sizes.split(","):
        config = TrainConfig.from_flags(task=(task,), model=model, steps=steps, prompt_length=prompt_length,
                                        train_examples=None if size == "all" else int(size),
                                        eval_examples=eval_examples, baseline=not results)
        trained = train_prompt(config, RunOptions(out=f"{out}/{size}", overwrite=True, progress=False),
                               log=lambda *a: None)
        trained.results[-1].label = f"learned on {trained.n_train} examples"
        results.extend(trained.results)
    return results


def main(argv=None):
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--task", default="antonyms")
    p.add_argument("--model", default=DEFAULT_MODEL)
    p.add_argument("--steps", type=int, default=300)
    p.add_argument("--sizes", default="100,all")
    p.add_argument("--prompt-length", type=int, default=20)
    p.add_argument("--eval-examples", type=int, default=None)
    p.add_argument("--out", default="checkpoints/sample-efficiency")
    p.add_argument("--json", default=None)
    args = p.parse_args(argv)
    results = run(args.task, args.model, args.steps, args.sizes, args.prompt_length, args.eval_examples, args.out)
    print(format_table(results))
    if args.json:
        with open(args.json, "w") as f:
            json.dump([r.summary() for r in results], f, indent=2)


if __name__ == "__main__":
    main()
