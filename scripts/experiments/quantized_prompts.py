"""The main job with the frozen model quantized (docs/quantization.md): the learned prompts' test
loss and exact match with the layers' matmul weights as they are (float32), in int8 and in 4 bits
(NF4), each prompt also evaluated on the float32 model, which it was not trained on (a prompt
trained against quantized weights, exported and run on the unquantized model).

    python scripts/experiments/quantized_prompts.py         # the main job, 5 seeds each (~18 min a row, 2-core CPU)
    python scripts/experiments/quantized_prompts.py --steps 40 --seeds 2 --eval-examples 200    # a small run

Every row trains the main job's settings (`jaxprompt train` defaults, `--seeds`) with one
`--quantize`; the runs go under --out/<quantize> and are replaced. reproduce_readme.py's
`--tables quantize` makes the same table.
"""
from __future__ import annotations

import argparse
import time

import jax

from jaxprompt.config import RunOptions, TrainConfig
from jaxprompt.evaluation.evaluate import evaluate_prompts
from jaxprompt.evaluation.results import PopulationResult, population_results
from jaxprompt.runs.load import load_run, member_of
from jaxprompt.training.run import train_prompt

SCHEMES = ("none", "int8", "int4")


def on_weights(run_dir: str, quantize: str, eval_examples: int | None):
    """The run's learned prompt (every member's) on the frozen model held as `quantize` says, on the
    test rows the run reported."""
    session, prompt, info = load_run(run_dir, quantize=quantize, cache=False)
    rows = session.task.load(seed=info["config"].data_seed)["test"]
    rows = rows[:eval_examples] if eval_examples is not None else rows
    K = len(info["members"])
    prompts = [member_of(prompt, k) for k in range(K)] if K else [prompt]
    per_prompt = evaluate_prompts(session, [rows], prompts, label=f"on {quantize} weights", baseline=False)
    held = sum(x.nbytes for x in jax.tree.leaves(session.frozen))
    return (population_results(per_prompt)[0] if K else per_prompt[0][0]), held


def run(out: str = "checkpoints/quantized-prompts", schemes=SCHEMES, **settings) -> list[dict]:
    """Per `--quantize`: the learned prompts as trained (on those weights) and on float32 weights,
    the bytes the frozen weights took, and the minutes the run took."""
    rows = []
    for quantize in schemes:
        config = TrainConfig.from_flags(quantize=quantize, baseline=False, **settings)
        t0 = time.perf_counter()
        trained = train_prompt(config, RunOptions(out=f"{out}/{quantize}", overwrite=True, progress=False),
                               log=lambda *a: None)
        minutes = (time.perf_counter() - t0) / 60
        learned, held = on_weights(trained.run_dir, quantize, config.data.eval_examples)
        on_float = learned if quantize == "none" else on_weights(trained.run_dir, "none", config.data.eval_examples)[0]
        rows.append({"quantize": quantize, "learned": learned, "on_float32": on_float, "weight_bytes": held,
                     "minutes": minutes, "steps": config.loop.total_steps(trained.n_train, config.data.batch_size),
                     "seeds": config.seeds})
    return rows


def _metric(r, name: str) -> tuple[float, float | None]:
    return r.metric(name) if isinstance(r, PopulationResult) else (getattr(r, name), None)


def table(rows: list[dict]) -> str:
    def cell(r, name, scale, fmt):
        value, std = _metric(r, name)
        return fmt.format(scale * value) + ("" if std is None else " ± " + fmt.format(scale * std))

    base = _metric(rows[0]["learned"], "exact_match")[0] if rows[0]["quantize"] == "none" else None
    lines = ["| --quantize | frozen weights held | test loss (nats) | exact match | vs none | "
             "the same prompts on float32 weights: exact match |", "|---|---|---|---|---|---|"]
    for row in rows:
        delta = "" if base is None else f"{100 * (_metric(row['learned'], 'exact_match')[0] - base):+.1f} points"
        match = lambda r: cell(r, "exact_match", 100, "{:.1f}%")
        lines.append(f"| {row['quantize']} | {row['weight_bytes'] / 2**20:.1f} MiB | "
                     f"{cell(row['learned'], 'loss', 1, '{:.3f}')} | {match(row['learned'])} | {delta} | "
                     f"{match(row['on_float32'])} |")
    first = rows[0]
    note = (f"({first['steps']} steps, {first['seeds']} seed(s) each: mean ± standard deviation; "
            f"{first['learned'].n:,} test examples; minutes per row: "
            + ", ".join(f"{r['quantize']} {r['minutes']:.1f}" for r in rows) + ")")
    return "\n".join(lines) + "\n\n" + note


def main(argv=None):
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--steps", type=int, default=None, help="default: the main job's (3 epochs)")
    p.add_argument("--seeds", type=int, default=5)
    p.add_argument("--eval-examples", type=int, default=None)
    p.add_argument("--schemes", default=",".join(SCHEMES), help="the --quantize values to train with, in order")
    p.add_argument("--out", default="checkpoints/quantized-prompts")
    args = p.parse_args(argv)
    settings = {"seeds": args.seeds, **({"steps": args.steps} if args.steps else {}),
                **({"eval_examples": args.eval_examples} if args.eval_examples else {})}
    if args.steps:
        settings["eval_every"] = max(1, args.steps // 2)
    print(table(run(args.out, tuple(args.schemes.split(",")), **settings)))


if __name__ == "__main__":
    main()
