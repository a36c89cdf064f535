"""Readable hard prompts on antonyms: soft prompt projected afterwards vs PEZ (projected gradients,
Wen et al. 2023) vs the relaxed one-hot prompt (a softmax over the vocabulary, annealed), with the
embedded model.

For each method: the prompt as trained (its inference form), and the prompt as real tokens
(nearest-token projection), both evaluated on held-out pairs with the same metrics, plus the
decoded hard prompt.

    python scripts/experiments/hard_prompts.py --steps 300 --prompt-length 5
"""

from __future__ import annotations

import argparse
import dataclasses
import json

from jaxprompt.config import RunOptions, TrainConfig
from jaxprompt.evaluation.evaluate import evaluate
from jaxprompt.evaluation.interpret import projected_prompt
from jaxprompt.evaluation.results import format_table
from jaxprompt.runs.load import load_run
from jaxprompt.training.run import train_prompt

SETTINGS = {
    "soft": dict(method="soft", lr=0.1),
    "pez": dict(method="pez", lr=0.1),
    "relaxed": dict(method="relaxed", lr=1.0, init="sampled_vocab"),
}


def run(steps: int = 300, prompt_length: int = 5, eval_examples: int = 300, out: str = "checkpoints/hard-prompts",
        eval_every: int = 50) -> list[dict]:
    """Per method: its decoded hard prompt and the results as trained and as tokens."""
    rows = []
    for name, options in SETTINGS.items():
        config = TrainConfig.from_flags(steps=steps, prompt_length=prompt_length, eval_examples=eval_examples,
                                        baseline=False, eval_every=eval_every, **options)
        trained = train_prompt(config, RunOptions(out=f"{out}/{name}", overwrite=True, progress=False),
                               log=lambda *a: None)
        session, prompt, info = load_run(trained.run_dir)
        test = session.task.load(seed=info["config"].data_seed)["test"][:eval_examples]
        soft, hard, _, text = projected_prompt(session, prompt)
        as_trained = dataclasses.replace(trained.results[-1], label=f"{name} as trained")
        as_tokens = evaluate(dataclasses.replace(session, method=soft), hard, test, label=f"{name} as tokens")
        rows.append({"method": name, "hard_prompt": text, "trained": as_trained, "projected": as_tokens})
    return rows


def main(argv=None):
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--steps", type=int, default=300)
    p.add_argument("--prompt-length", type=int, default=5)
    p.add_argument("--eval-examples", type=int, default=300)
    p.add_argument("--out", default="checkpoints/hard-prompts")
    p.add_argument("--json", default=None)
    args = p.parse_args(argv)
    rows = run(args.steps, args.prompt_length, args.eval_examples, args.out)
    for row in rows:
        print(f"{row['method']}: hard prompt {row['hard_prompt']!r}")
    print(format_table([r for row in rows for r in (row["trained"], row["projected"])]))
    if args.json:
        with open(args.json, "w") as f:
            json.dump([{"method": r["method"], "hard_prompt": r["hard_prompt"], "trained": r["trained"].summary(),
                        "projected": r["projected"].summary()} for r in rows], f, indent=2)


if __name__ == "__main__":
    main()
