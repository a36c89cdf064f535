"""Does a learned prompt elicit knowledge, or teach it? Learned vs written prompt on antonym test
pairs seen and unseen in the embedded model's pretraining.

The embedded model's corpus leaves out a fixed share of antonym pairs entirely (the model
directory's heldout_pairs.tsv; see scripts/tools/corpus.py), chosen apart from the task's split, so
the antonyms test split holds both. A prompt that only finds what pretraining put in the model
gains on seen pairs; one that teaches the task gains on unseen pairs too. The knowledge probe
ranks the first token of the answer after fixed phrasings, with no prompt training at all.

    python scripts/experiments/heldout_pairs.py                       # trains the main job's configuration (~4 min)
    python scripts/experiments/heldout_pairs.py --run checkpoints/antonyms-soft-...   # a finished run
    python scripts/experiments/heldout_pairs.py --quick                               # a smoke run: 20 steps
"""

from __future__ import annotations

import argparse
import json
import os
import sys

import numpy as np

sys.path.insert(0, os.path.join(os.path.dirname(os.path.dirname(os.path.abspath(__file__))), "tools"))
from corpus import HELDOUT_PAIRS_FILE, read_heldout_pairs  # noqa: E402
from pretrain_tiny import first_token_ranks  # noqa: E402

PROBE_PHRASES = {
    "The opposite of X is": "The opposite of {a} is",  # a corpus phrasing
    "Here are two antonyms X and": "Here are two antonyms {a} and",  # the written prompt, never in the corpus
    "Here are two X and": "Here are two {a} and",  # the template with an empty prompt
}


def learned_prompts(args):
    """(session, learned prompts, data seed, model directory) of a run: the main job's configuration
    trained now, or a finished run loaded; a population's members each give one prompt. The one
    place this script uses jaxprompt.run's API."""
    from jaxprompt.config import RunOptions, TrainConfig
    from jaxprompt.runs.load import load_run, member_of
    from jaxprompt.training.run import train_prompt

    run_dir = args.run
    if run_dir is None:
        flags = {k: v for k, v in {"model": args.model, "steps": args.steps, "seeds": args.seeds}.items() if v}
        if args.quick:
            flags = {"steps": 20, "eval_examples": 60, "eval_every": 10, **flags}
        run_dir = train_prompt(TrainConfig.from_flags(**flags), RunOptions(out=args.out, progress=False),
                               log=lambda *a: None).run_dir
        print(f"run directory: {run_dir}", file=sys.stderr)
    session, prompt, info = load_run(run_dir)
    K = len(info["members"])
    prompts = [member_of(prompt, k) for k in range(K)] if K else [prompt]
    return session, prompts, info["config"].data_seed, info["model_dir"]


def scores(session, prompts: list, rows: list[dict]) -> tuple[dict, dict]:
    """(written, learned) test loss and exact match on `rows`; the learned prompts' as mean and
    sample standard deviation over a population's members (jaxprompt.evaluate's API)."""
    from jaxprompt.evaluation.evaluate import evaluate_prompts
    from jaxprompt.evaluation.results import spread

    per_prompt = evaluate_prompts(session, [rows], prompts)  # each: [written, learned]
    written = {name: getattr(per_prompt[0][0], name) for name in ("loss", "exact_match")}
    learned = {}
    for name in ("loss", "exact_match"):
        mean, std = spread([getattr(results[1], name) for results in per_prompt])
        learned[name], learned[f"{name}_std"] = mean, (std if len(prompts) > 1 else None)
    return written, learned


def _with_std(figures: dict, name: str, fmt) -> str:
    std = figures.get(f"{name}_std")
    return fmt(figures[name]) + ("" if std is None else f" ± {fmt(std)}")


def read_pairs(model_dir: str) -> set[tuple[str, str]]:
    try:
        return set(read_heldout_pairs(model_dir))
    except FileNotFoundError:
        sys.exit(f"error: {model_dir} has no {HELDOUT_PAIRS_FILE}: the model's held-out antonym pairs are "
                 "unknown (pretrain it with scripts/tools/pretrain_tiny.py)")


def probe(session, rows: list[dict]) -> dict:
    """Top-1 / top-10 share of the answer's first token after each probe phrase (no prompt)."""
    out = {}
    for name, phrase in PROBE_PHRASES.items():
        ranks = first_token_ranks(session.model, session.frozen, session.tokenizer,
                                  [phrase.format(a=r["word1"]) for r in rows], [" " + r["word2"] for r in rows])
        out[name] = {"top1": float(np.mean(ranks < 1)), "top10": float(np.mean(ranks < 10))}
    return out


def main(argv=None):
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--run", default=None, help="a finished run directory (default: train one now)")
    p.add_argument("--model", default=None, help="model to train on (default: the embedded model)")
    p.add_argument("--steps", type=int, default=None, help="training steps (default: the main job's 3 epochs)")
    p.add_argument("--seeds", type=int, default=None, help="train this many prompts (seeds) at once (default 1)")
    p.add_argument("--out", default=None, help="run directory for the new run (default: checkpoints/antonyms-soft-TIME)")
    p.add_argument("--json", default=None, help="also write the figures to this JSON file")
    p.add_argument("--quick", action="store_true", help="a smoke run: 20 training steps (not the documented figures)")
    args = p.parse_args(argv)
    if args.seeds is not None and args.seeds < 1:
        p.error(f"--seeds must be a positive number of prompts, got {args.seeds}")
    if args.steps is not None and args.steps < 1:
        p.error(f"--steps must be a positive number of steps, got {args.steps}")

    session, prompts, seed, model_dir = learned_prompts(args)
    heldout = read_pairs(model_dir)
    splits = session.task.load(seed=seed)
    test = splits["test"]
    groups = {"seen": [r for r in test if (r["word1"], r["word2"]) not in heldout],
              "unseen": [r for r in test if (r["word1"], r["word2"]) in heldout]}
    # an unseen pair's first word may still have another antonym in the corpus (good / bad seen, good / evil not)
    has_seen_antonym = {r["word1"] for rows in splits.values() for r in rows if (r["word1"], r["word2"]) not in heldout}
    figures = {}
    for group, rows in groups.items():
        written, learned = scores(session, prompts, rows)
        figures[group] = {"pairs": len(rows), "written": written, "learned": learned, "probe": probe(session, rows)}

    print(f"\nantonyms test pairs seen / unseen in pretraining ({model_dir})\n")
    print("| test pairs | n | written: loss | written: exact match | learned: loss | learned: exact match |")
    print("|---|---|---|---|---|---|")
    for group, f in figures.items():
        w, l = f["written"], f["learned"]
        loss, match = (lambda v: f"{v:.3f}"), (lambda v: f"{100 * v:.1f}%")
        print(f"| {group} | {f['pairs']:,} | {loss(w['loss'])} | {match(w['exact_match'])} "
              f"| {_with_std(l, 'loss', loss)} | {_with_std(l, 'exact_match', match)} |")
    if len(prompts) > 1:
        print(f"\nlearned: mean ± standard deviation over the run's {len(prompts)} prompts (seeds)")
    n_other = sum(r["word1"] in has_seen_antonym for r in groups["unseen"])
    print(f"\n{n_other} of the {len(groups['unseen'])} unseen pairs have a first word with another antonym in the corpus.")
    figures["unseen"]["first_word_has_seen_antonym"] = n_other
    print("\nknowledge probe: rank of the answer's first token after the phrase (no prompt training)\n")
    print("| phrase | seen: top-1 | seen: top-10 | unseen: top-1 | unseen: top-10 |")
    print("|---|---|---|---|---|")
    for name in PROBE_PHRASES:
        s, u = figures["seen"]["probe"][name], figures["unseen"]["probe"][name]
        print(f"| \"{name}\" | {100 * s['top1']:.1f}% | {100 * s['top10']:.1f}% "
              f"| {100 * u['top1']:.1f}% | {100 * u['top10']:.1f}% |")
    if args.json:
        with open(args.json, "w") as f:
            json.dump(figures, f, indent=2)


if __name__ == "__main__":
    main()
