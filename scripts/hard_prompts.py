"""Readable hard prompts on antonyms: soft prompt projected afterwards vs PEZ (projected gradients,
Wen et al. 2023) vs the relaxed one-hot prompt (the seed's softmax attempt), with the embedded model.

For each method: the prompt as trained, and the prompt as real tokens (nearest-token projection),
both evaluated on held-out pairs with the same metrics, plus the decoded hard prompt.

    python scripts/hard_prompts.py --steps 300 --prompt-length 5
"""

from __future__ import annotations

import argparse
import dataclasses
import json

from jaxprompt.evaluate import evaluate, format_table
from jaxprompt.interpret import projected_prompt
from jaxprompt.run import TrainConfig, load_run, train_prompt


def main(argv=None):
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--steps", type=int, default=300)
    p.add_argument("--prompt-length", type=int, default=5)
    p.add_argument("--eval-examples", type=int, default=300)
    p.add_argument("--out", default="checkpoints/hard-prompts")
    p.add_argument("--json", default=None)
    args = p.parse_args(argv)
    settings = {
        "soft": dict(method="soft", lr=0.1),
        "pez": dict(method="pez", lr=0.1),
        "relaxed": dict(method="relaxed", lr=1.0, init="sampled_vocab"),
    }
    rows, results = [], []
    for name, options in settings.items():
        config = TrainConfig(steps=args.steps, prompt_length=args.prompt_length, eval_examples=args.eval_examples,
                             out=f"{args.out}/{name}", baseline=False, progress=False, eval_every=50, **options)
        run = train_prompt(config, log=lambda *a: None)
        session, prompt, _ = load_run(run.run_dir)
        test = session.task.load()["test"][: args.eval_examples]
        soft, hard, ids, text = projected_prompt(session, prompt)
        as_trained = run.results[-1]
        as_trained.label = f"{name} as trained"
        projected = evaluate(dataclasses.replace(session, method=soft), hard, test, label=f"{name} as tokens")
        results += [as_trained, projected]
        rows.append({"method": name, "hard_prompt": text, "trained": as_trained.summary(),
                     "projected": projected.summary()})
        print(f"{name}: hard prompt {text!r}", flush=True)
    print(format_table(results))
    if args.json:
        with open(args.json, "w") as f:
            json.dump(rows, f, indent=2)


if __name__ == "__main__":
    main()
