"""Regenerates every results table of docs/results.md (and the README's main table), in their format, from runs made now.

    python scripts/experiments/reproduce_readme.py             # the documented settings (about an hour on a 2-core CPU)
    python scripts/experiments/reproduce_readme.py --quick     # a smoke run: few steps, small test sets (minutes)

Tables, in order:
  main job           `jaxprompt train` with its defaults: the written prompt vs the learned soft prompt,
                     and the same training on a randomly initialised model of the same shape
  sample efficiency  scripts/experiments/sample_efficiency.py: 100 training examples vs all of them
  hard prompts       scripts/experiments/hard_prompts.py: soft projected afterwards vs PEZ vs relaxed
  held-out pairs     scripts/experiments/heldout_pairs.py on the main job's run: antonym pairs seen / unseen in pretraining
  choice tasks       supersense and antonym-choice trained with --loss choices: written vs learned accuracy
  quantize           (only when asked: --tables quantize) scripts/experiments/quantized_prompts.py: the main job
                     with --quantize none, int8 and int4, each prompt also evaluated on float32 weights

Runs go under --out and are replaced each time. The markdown goes to stdout (and to --markdown).
"""

from __future__ import annotations

import argparse
import os
import subprocess
import sys
import time

import jax

from jaxprompt.config import RunOptions, TrainConfig
from jaxprompt.data.tasks import get_task
from jaxprompt.data.tokenizer import Tokenizer
from jaxprompt.evaluation.results import EvalResult, PopulationResult
from jaxprompt.models import Model
from jaxprompt.models.convert import save_pretrained
from jaxprompt.models.loading import load_pretrained
from jaxprompt.paths import DEFAULT_MODEL
from jaxprompt.training.run import train_prompt

SCRIPTS = os.path.dirname(os.path.abspath(__file__))
sys.path.insert(0, SCRIPTS)

import hard_prompts  # noqa: E402  (a sibling script)
import quantized_prompts  # noqa: E402
import sample_efficiency  # noqa: E402

TABLES = ("main", "sample-efficiency", "hard-prompts", "held-out-pairs", "choice-tasks")  # in docs/results.md's order
OPTIONAL = ("quantize",)  # made only when --tables names them (docs/quantization.md's table)
# what --quick changes: a smoke run that exercises every table in a few minutes
QUICK = {"main": dict(steps=20, eval_examples=60, eval_every=10, seeds=2),
         "sample_efficiency": dict(steps=10, sizes="20,all", prompt_length=5, eval_examples=60),
         "hard_prompts": dict(steps=10, prompt_length=3, eval_examples=60, eval_every=5),
         "choice_tasks": dict(steps=10, prompt_length=4, eval_examples=60, eval_every=5, seeds=2),
         "quantize": dict(steps=20, eval_examples=60, eval_every=10, seeds=2)}
FULL = {"main": dict(seeds=5), "sample_efficiency": dict(steps=300, sizes="100,all", prompt_length=20, eval_examples=None),
        "hard_prompts": dict(steps=300, prompt_length=5, eval_examples=300, eval_every=50),
        "choice_tasks": dict(steps=300, prompt_length=10, eval_examples=None, eval_every=50, seeds=5),
        "quantize": dict(seeds=5)}


def _row(cells) -> str:
    return "| " + " | ".join(cells) + " |"


def _table(header: list[str], rows: list[list[str]]) -> str:
    return "\n".join([_row(header), _row(["---"] * len(header)), *map(_row, rows)])


def _mean_std(r: EvalResult | PopulationResult, name: str) -> tuple[float | None, float | None]:
    """A metric's value, with its spread over a population's members (None for a single prompt)."""
    if isinstance(r, PopulationResult):
        return r.metric(name) or (None, None)
    return getattr(r, name), None


def _cell(value: float | None, std: float | None, fmt, bold: bool) -> str:
    text = "-" if value is None else fmt(value) + ("" if std is None else f" ± {fmt(std)}")
    return f"**{text}**" if bold else text


def _loss(r: EvalResult | PopulationResult, bold: bool = False) -> str:
    return _cell(*_mean_std(r, "loss"), lambda v: f"{v:.3f}", bold)


def _match(r: EvalResult | PopulationResult, bold: bool = False) -> str:
    return _cell(*_mean_std(r, "exact_match"), lambda v: f"{100 * v:.1f}%", bold)


def _accuracy(r: EvalResult | PopulationResult, name: str = "accuracy", bold: bool = False) -> str:
    return _cell(*_mean_std(r, name), lambda v: f"{100 * v:.1f}%", bold)


def choice_tasks_table(out: str, settings: dict) -> str:
    """Per built-in choice task: the written prompt and the prompt learned with --loss choices."""
    rows = []
    for task in ("supersense", "antonym-choice"):
        config = TrainConfig.from_flags(tasks=(task,), loss="choices", lr=0.1, **settings)
        written, learned = train_prompt(config, RunOptions(out=f"{out}/choices-{task}", overwrite=True, progress=False),
                                        log=lambda *a: None).results
        if isinstance(written, PopulationResult):
            written = written.members[0]
        rows.append([task, _accuracy(written), _accuracy(written, "acc_norm"), _accuracy(learned),
                     _accuracy(learned, "acc_norm"), f"{learned.n:,}"])
    note = (f"--loss choices, {settings['steps']} steps, P={settings['prompt_length']}; learned: mean ± standard "
            f"deviation over {settings['seeds']} seeds")
    return _table(["task", "written acc", "written acc_norm", "learned acc", "learned acc_norm", "test examples"],
                  rows) + f"\n\n({note})"


def random_model(directory: str) -> str:
    """A randomly initialised model of the embedded model's shape, with its tokenizer."""
    config, _ = load_pretrained(DEFAULT_MODEL)
    save_pretrained(config, Model(config).init(jax.random.key(0)), directory)
    Tokenizer.load(DEFAULT_MODEL).save(directory)
    return directory


def main_job(out: str, settings: dict) -> str:
    config = TrainConfig.from_flags(**settings)
    t0 = time.perf_counter()
    run = train_prompt(config, RunOptions(out=f"{out}/main", overwrite=True, progress=False), log=lambda *a: None)
    minutes = (time.perf_counter() - t0) / 60
    written, learned = run.results
    if isinstance(written, PopulationResult):  # the same text and rows for every member: one value
        written = written.members[0]
    random = train_prompt(config.replace(model=random_model(f"{out}/random-model"), baseline=False),
                          RunOptions(out=f"{out}/main-random-model", overwrite=True, progress=False),
                          log=lambda *a: None).results[0]
    task = get_task(config.tasks[0])
    template = task.template.text.replace("{prompt}", task.hard_prompt)
    mean = lambda r, name: _mean_std(r, name)[0] or 0.0
    better_loss = mean(learned, "loss") < mean(written, "loss")
    better_match = mean(learned, "exact_match") > mean(written, "exact_match")
    P = config.method.length
    rows = [[f"written: `{template}`", _loss(written, not better_loss), _match(written, not better_match)],
            [f"learned soft prompt (P={P})", _loss(learned, better_loss), _match(learned, better_match)],
            ["learned soft prompt, randomly initialised model of the same shape", _loss(random), _match(random)]]
    steps = max(h["step"] for h in run.history)
    note = (f"{steps} steps at batch {config.data.batch_size}, {minutes:.1f} minutes of training and evaluation; "
            f"{learned.n:,} held-out test examples")
    if config.seeds > 1:
        note += (f"; learned rows: mean ± standard deviation over {config.seeds} seeds, trained at once "
                 f"(`--seeds {config.seeds}`)")
    return _table(["prompt", "test loss (nats)", "exact match"], rows) + f"\n\n({note})"


def sample_efficiency_table(out: str, settings: dict) -> str:
    results = sample_efficiency.run(out=f"{out}/sample-efficiency", **settings)
    rows = [["written prompt" if r.label.startswith("written") else r.label.replace("learned on ", ""),
             _loss(r), _match(r)] for r in results]
    return _table(["training examples", "test loss (nats)", "exact match"], rows)


def hard_prompts_table(out: str, settings: dict) -> str:
    cell = lambda text: "`" + text.replace("|", "\\|") + "`"  # a bare | would end the table cell
    rows = [[row["method"], cell(row["hard_prompt"]), f"{_loss(row['trained'])} / {_match(row['trained'])}",
             f"{_loss(row['projected'])} / {_match(row['projected'])}"]
            for row in hard_prompts.run(out=f"{out}/hard-prompts", **settings)]
    return _table(["method", "hard prompt", "as trained: loss / exact match", "as tokens: loss / exact match"], rows)


def heldout_pairs_table(out: str) -> str:
    """scripts/experiments/heldout_pairs.py on the main job's run (trained above, not again)."""
    script = os.path.join(SCRIPTS, "heldout_pairs.py")
    proc = subprocess.run([sys.executable, script, "--run", f"{out}/main"], capture_output=True, text=True)
    if proc.returncode:
        raise SystemExit(f"scripts/experiments/heldout_pairs.py failed:\n{proc.stderr[-2000:]}")
    return proc.stdout.strip()


def main(argv=None):
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--quick", action="store_true", help="few steps and small test sets: check that it all runs")
    p.add_argument("--out", default="checkpoints/readme", help="where the runs go (replaced)")
    p.add_argument("--markdown", default=None, help="also write the tables to this file")
    p.add_argument("--tables", default=",".join(TABLES),
                   help=f"comma-separated tables to make, of {', '.join(TABLES + OPTIONAL)} (default: all but "
                        f"{', '.join(OPTIONAL)}; held-out-pairs reads the main job's run under --out)")
    args = p.parse_args(argv)
    chosen = args.tables.split(",")
    if unknown := [t for t in chosen if t not in TABLES + OPTIONAL]:
        p.error(f"--tables: unknown {', '.join(unknown)}; choose from {', '.join(TABLES + OPTIONAL)}")
    if "held-out-pairs" in chosen and "main" not in chosen and not os.path.isdir(f"{args.out}/main"):
        p.error(f"--tables held-out-pairs needs the main job's run in {args.out}/main: add main")
    settings = QUICK if args.quick else FULL
    makers = {"main": ("What the main job gives", lambda: main_job(args.out, settings["main"])),
              "sample-efficiency": ("Sample efficiency",
                                    lambda: sample_efficiency_table(args.out, settings["sample_efficiency"])),
              "hard-prompts": ("Hard prompts", lambda: hard_prompts_table(args.out, settings["hard_prompts"])),
              "held-out-pairs": ("Held-out antonym pairs", lambda: heldout_pairs_table(args.out)),
              "choice-tasks": ("Choice tasks", lambda: choice_tasks_table(args.out, settings["choice_tasks"])),
              "quantize": ("Quantized frozen weights", lambda: quantized_prompts.table(
                  quantized_prompts.run(f"{args.out}/quantize", **settings["quantize"])))}
    sections = []
    for name in TABLES + OPTIONAL:
        if name not in chosen:
            continue
        title, make = makers[name]
        print(f"... {title}", file=sys.stderr, flush=True)
        sections.append(f"### {title}{' (--quick: not the documented figures)' if args.quick else ''}\n\n{make()}\n")
        print(sections[-1], flush=True)
    if args.markdown:
        with open(args.markdown, "w") as f:
            f.write("\n".join(sections))


if __name__ == "__main__":
    main()
