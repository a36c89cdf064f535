"""`jaxprompt train | eval | generate | inspect | export | import | tasks | sweep`.

`train`'s options are generated from the `TrainConfig` dataclass, so the CLI and the Python API
cannot drift apart.
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import os
import sys
import types
import typing

from jaxprompt.run import TrainConfig

HELP = {
    "task": "built-in task name (see `jaxprompt tasks`) or a task file (.toml/.yaml)",
    "model": "HF model id (gpt2, facebook/opt-1.3b, ...) or local checkpoint dir; default: the embedded model",
    "method": "soft | ptuning | prefix | relaxed | pez",
    "prompt_length": "virtual tokens per {prompt} slot",
    "init": "vocab_normal | uniform | sampled_vocab | text",
    "init_text": "text whose embeddings initialise the prompt (init=text); default: the written prompt",
    "steps": "training steps (default: --epochs over the training set)",
    "dtype": "frozen-weight compute dtype: float32 | bfloat16 (the prompt stays fp32)",
    "devices": "number of local devices for data parallelism (default: all)",
    "out": "run directory (default: checkpoints/<task>-<method>-<time>)",
    "resume": "continue the run in --out from its last checkpoint",
    "train_examples": "train on the first N training examples only",
    "eval_examples": "evaluate on at most N validation/test examples",
    "patience": "early stopping: evaluations without improvement before stopping",
    "baseline": "also evaluate the written prompt",
}


class CLIError(Exception):
    pass


def _add_dataclass_options(parser: argparse.ArgumentParser, cls) -> None:
    hints = typing.get_type_hints(cls)
    for f in dataclasses.fields(cls):
        flag = "--" + f.name.replace("_", "-")
        kind = hints[f.name]
        optional = isinstance(kind, types.UnionType) or typing.get_origin(kind) is typing.Union
        base = next(a for a in typing.get_args(kind) if a is not type(None)) if optional else kind
        if base is bool:
            parser.add_argument(flag, action=argparse.BooleanOptionalAction, default=f.default,
                                help=HELP.get(f.name))
        else:
            parser.add_argument(flag, type=base, default=f.default, help=HELP.get(f.name),
                                metavar=f.name.upper())


def _config_from(args, cls):
    return cls(**{f.name: getattr(args, f.name) for f in dataclasses.fields(cls)})


def cmd_train(args) -> int:
    from jaxprompt.run import train_prompt

    train_prompt(_config_from(args, TrainConfig))
    return 0


def cmd_eval(args) -> int:
    from jaxprompt.evaluate import evaluate, format_samples, format_table
    from jaxprompt.run import load_run

    session, prompt, info = load_run(args.run_dir, which=args.which, model=args.model)
    rows = session.task.load(seed=info["config"]["seed"])[args.split]
    rows = rows[: args.examples] if args.examples else rows
    results = []
    if args.baseline and session.task.hard_prompt:
        results.append(evaluate(session, None, rows, hard_prompt=session.task.hard_prompt,
                                label=f"written: {session.task.hard_prompt!r}"))
    results.append(evaluate(session, prompt, rows, label=f"learned ({args.which})"))
    print(format_table(results))
    print()
    print(format_samples(results[-1]))
    if args.json:
        with open(args.json, "w") as f:
            json.dump({"results": [r.summary() for r in results]}, f, indent=2)
    return 0


def _parse_inputs(session, texts: list[str]) -> list[dict]:
    """`word1=hot`, a JSON object, or a bare value for the task's single input field."""
    inputs = [f for f in session.task.fields if f not in session.task.template.target_fields]
    rows = []
    for text in texts:
        text = text.strip()
        if not text:
            continue
        if text.startswith("{"):
            row = json.loads(text)
        elif "=" in text and text.split("=", 1)[0] in inputs:
            row = dict(part.split("=", 1) for part in text.split(";"))
        elif len(inputs) == 1:
            row = {inputs[0]: text}
        else:
            raise CLIError(f"give the fields {', '.join(inputs)} as 'field=value;field=value' or JSON")
        missing = [f for f in inputs if f not in row]
        if missing:
            raise CLIError(f"input {text!r} lacks field {missing[0]!r}")
        rows.append({**{f: "" for f in session.task.template.target_fields}, **row})
    return rows


def cmd_generate(args) -> int:
    import jax
    import numpy as np

    from jaxprompt.data import collate
    from jaxprompt.models.generate import Sampling, generate
    from jaxprompt.prompts.apply import prompt_inputs
    from jaxprompt.run import load_run

    session, prompt, _ = load_run(args.run_dir, which=args.which, model=args.model)
    texts = args.text if args.text else sys.stdin.read().splitlines()
    rows = _parse_inputs(session, texts)
    if not rows:
        raise CLIError("no input: pass --text or lines on stdin")
    encoded = session.encode(rows, with_target=False)
    batch = collate(encoded, session.pad_id, padding="left")
    embeds, prefix = prompt_inputs(session.model, session.frozen, session.method, prompt, batch)
    sampling = Sampling(args.temperature, args.top_k, args.top_p)
    tokens, _ = generate(session.model, session.frozen, embeds, batch["mask"],
                         max_new_tokens=args.max_new_tokens or session.task.max_new_tokens, sampling=sampling,
                         rng=jax.random.key(args.seed), eos_token_id=session.tokenizer.eos_token_id, prefix=prefix)
    for row, out in zip(rows, np.asarray(tokens)):
        ids = list(out)
        if session.tokenizer.eos_token_id in ids:
            ids = ids[: ids.index(session.tokenizer.eos_token_id)]
        shown = session.task.template.render_hard(row, "[prompt]")
        print(f"{shown}{session.tokenizer.decode(ids)}")
    return 0


def cmd_inspect(args) -> int:
    from jaxprompt.interpret import format_neighbours, nearest_vocabulary, plot_embedding_space, prompt_vectors
    from jaxprompt.run import load_run

    session, prompt, info = load_run(args.run_dir, which=args.which, model=args.model)
    vectors = prompt_vectors(session, prompt)
    table = session.model.embedding_table(session.frozen)
    for metric in ("cosine", "l2"):
        print(f"nearest vocabulary tokens by {metric}:")
        print(format_neighbours(nearest_vocabulary(vectors, table, session.tokenizer, metric, args.top)))
        print()
    if args.plot:
        plot_embedding_space(vectors, table, args.plot, session.tokenizer)
        print(f"embedding-space plot: {args.plot}")
    if args.evaluate:
        import dataclasses

        from jaxprompt.evaluate import evaluate, format_table
        from jaxprompt.interpret import projected_prompt

        soft, hard, _, text = projected_prompt(session, prompt)
        print(f"projected hard prompt: {text!r}")
        rows = session.task.load(seed=info["config"]["seed"])["test"][: args.evaluate]
        learned = evaluate(session, prompt, rows, label="learned (continuous)")
        projected = evaluate(dataclasses.replace(session, method=soft), hard, rows, label="projected to tokens")
        print(format_table([learned, projected]))
    return 0


def cmd_export(args) -> int:
    from jaxprompt.export import export_peft, export_plain
    from jaxprompt.run import load_run

    session, prompt, info = load_run(args.run_dir, which=args.which, model=args.model)
    if args.to == "peft":
        path = export_peft(session, prompt, args.out_dir, base_model=info["model_dir"])
    else:
        path = export_plain(session, prompt, args.out_dir, base_model=info["model_dir"])
    print(f"exported to {path}")
    return 0


def cmd_import(args) -> int:
    from jaxprompt.export import import_peft

    run_dir = import_peft(args.adapter_dir, args.out_dir, task=args.task, model=args.model)
    print(f"imported into run directory {run_dir}")
    return 0


def cmd_tasks(args) -> int:
    from jaxprompt.tasks import BUILTIN

    for name, task in BUILTIN.items():
        print(f"{name:<12} {task.template.text!r} -> {task.template.target!r}  written prompt: {task.hard_prompt!r}")
        print(f"{'':<12} {task.description}")
    return 0


def cmd_sweep(args) -> int:
    from jaxprompt.sweep import sweep_prompt_length

    base = _config_from(args, TrainConfig)
    best, table = sweep_prompt_length(base, args.lengths, args.trials, args.sweep_dir)
    print(table)
    print(f"best prompt length: {best}")
    return 0


def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="jaxprompt", description="Learn prompts by backpropagation against frozen LMs.")
    sub = p.add_subparsers(dest="command", required=True)

    train = sub.add_parser("train", help="train a prompt on a task and compare it with the written prompt")
    _add_dataclass_options(train, TrainConfig)
    train.set_defaults(fn=cmd_train)

    def run_parser(name, help):
        q = sub.add_parser(name, help=help)
        q.add_argument("run_dir")
        q.add_argument("--which", choices=("best", "last"), default="best")
        q.add_argument("--model", default=None, help="load the frozen model from here instead of the run's")
        return q

    ev = run_parser("eval", "evaluate a trained prompt (and the written prompt) on a split")
    ev.add_argument("--split", choices=("train", "validation", "test"), default="test")
    ev.add_argument("--examples", type=int, default=None)
    ev.add_argument("--baseline", action=argparse.BooleanOptionalAction, default=True)
    ev.add_argument("--json", default=None, help="also write the metrics to this file")
    ev.set_defaults(fn=cmd_eval)

    gen = run_parser("generate", "generate with a trained prompt, from --text or stdin lines")
    gen.add_argument("--text", action="append", help="an input: a value, 'field=value;...' or JSON (repeatable)")
    gen.add_argument("--max-new-tokens", type=int, default=None)
    gen.add_argument("--temperature", type=float, default=0.0)
    gen.add_argument("--top-k", type=int, default=0)
    gen.add_argument("--top-p", type=float, default=1.0)
    gen.add_argument("--seed", type=int, default=0)
    gen.set_defaults(fn=cmd_generate)

    ins = run_parser("inspect", "nearest vocabulary tokens of each prompt vector; embedding-space plot")
    ins.add_argument("--top", type=int, default=5)
    ins.add_argument("--plot", default=None, help="write a PCA plot of vocabulary vs prompt vectors (PNG)")
    ins.add_argument("--evaluate", type=int, default=0, metavar="N",
                     help="evaluate the prompt projected to its nearest tokens on N test examples")
    ins.set_defaults(fn=cmd_inspect)

    ex = sub.add_parser("export", help="export a trained prompt for PyTorch (PEFT adapter or plain tensors)")
    ex.add_argument("--to", choices=("peft", "plain"), default="peft")
    ex.add_argument("run_dir")
    ex.add_argument("out_dir")
    ex.add_argument("--which", choices=("best", "last"), default="best")
    ex.add_argument("--model", default=None)
    ex.set_defaults(fn=cmd_export)

    im = sub.add_parser("import", help="import a PEFT prompt adapter as a jaxprompt run")
    im.add_argument("--from", dest="source", choices=("peft",), default="peft")
    im.add_argument("adapter_dir")
    im.add_argument("out_dir")
    im.add_argument("--task", default="antonyms")
    im.add_argument("--model", default=None, help="the base model (default: the adapter's base_model_name_or_path)")
    im.set_defaults(fn=cmd_import)

    tasks = sub.add_parser("tasks", help="list the built-in tasks")
    tasks.set_defaults(fn=cmd_tasks)

    sw = sub.add_parser("sweep", help="search the prompt length with Optuna; reports the best length")
    _add_dataclass_options(sw, TrainConfig)
    sw.add_argument("--lengths", type=lambda s: [int(x) for x in s.split(",")], default=[1, 5, 10, 20])
    sw.add_argument("--trials", type=int, default=4)
    sw.add_argument("--sweep-dir", default=None)
    sw.set_defaults(fn=cmd_sweep)
    return p


def main(argv=None) -> int:
    from jaxprompt.checkpoint import CheckpointError as RunCheckpointError
    from jaxprompt.models.config import ConfigError
    from jaxprompt.data import TemplateError
    from jaxprompt.models.convert import CheckpointError
    from jaxprompt.tokenizer import TokenizerError
    from jaxprompt.train import NonFiniteLossError

    args = build_parser().parse_args(argv)
    os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")
    try:
        return args.fn(args)
    except (CLIError, TemplateError, ConfigError, CheckpointError, RunCheckpointError, TokenizerError,
            NonFiniteLossError, ValueError, FileNotFoundError) as e:
        print(f"jaxprompt {args.command}: error: {e}", file=sys.stderr)
        return 2


if __name__ == "__main__":
    sys.exit(main())
