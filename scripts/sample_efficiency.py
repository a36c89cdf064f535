"""Sample efficiency: a prompt trained on 100 examples vs on all of them (same steps, same test set).

    python scripts/sample_efficiency.py --task antonyms --steps 300
"""

from __future__ import annotations

import argparse
import json

from jaxprompt.evaluate import format_table
from jaxprompt.run import TrainConfig, train_prompt


def main(argv=None):
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--task", default="antonyms")
    p.add_argument("--model", default=None)
    p.add_argument("--steps", type=int, default=300)
    p.add_argument("--sizes", default="100,all")
    p.add_argument("--prompt-length", type=int, default=20)
    p.add_argument("--eval-examples", type=int, default=None)
    p.add_argument("--out", default="checkpoints/sample-efficiency")
    p.add_argument("--json", default=None)
    args = p.parse_args(argv)
    results, rows = [], []
    for size in args.sizes.split(","):
        n = None if size == "all" else int(size)
        config = TrainConfig(task=args.task, steps=args.steps, prompt_length=args.prompt_length, train_examples=n,
                             eval_examples=args.eval_examples, out=f"{args.out}/{size}", baseline=not results,
                             progress=False, **({"model": args.model} if args.model else {}))
        run = train_prompt(config, log=lambda *a: None)
        for r in run.results:
            if r.label.startswith("learned"):
                r.label = f"learned on {run.n_train} examples"
        results.extend(run.results)
        rows.append({"train_examples": run.n_train, **run.results[-1].summary()})
    print(format_table(results))
    if args.json:
        with open(args.json, "w") as f:
            json.dump(rows, f, indent=2)


if __name__ == "__main__":
    main()
