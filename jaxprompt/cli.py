"""`jaxprompt train | eval | generate | inspect | export | import | tasks | sweep | plan`.

Every option is generated from a settings dataclass of config.py (its default, help text and
allowed values), so the CLI and the Python API cannot drift apart, and every value is checked
before anything runs. Bad input ends in one line on stderr and exit code 2, never a traceback;
Ctrl-C in one line and exit code 130, with the run's last committed checkpoint kept.

Commands import what they use when they run: `--help`, `jaxprompt tasks` and a refused flag
answer without loading JAX.
"""

from __future__ import annotations

import argparse
import contextlib
import json
import os
import signal
import sys
import threading
import typing

from jaxprompt.config import (EvalOptions, ExportOptions, GenerateOptions, ImportOptions, InspectOptions, LoadOptions,
                              PlanOptions, RunOptions, Settings, SettingError, SweepOptions, TrainConfig, allowed,
                              build, get, leaves, parse_mesh, parse_text)

PROG = "jaxprompt"


class CLIError(ValueError):
    pass


class Parser(argparse.ArgumentParser):
    """argparse, but a usage error is one line (exit 2) like every other bad input."""

    def error(self, message: str) -> typing.NoReturn:
        self.exit(2, f"{self.prog}: error: {' '.join(message.split())} (see --help)\n")


# ---- options generated from the settings dataclasses ---------------------------------------------

def _converter(flag: str, hint, meta):
    def convert(text: str):
        try:
            return parse_text(text, hint)
        except ValueError:
            raise argparse.ArgumentTypeError(f"{text!r} is not {allowed(hint, meta)}") from None

    convert.__name__ = flag  # argparse names the converter in some messages
    return convert


def add_settings(parser: argparse.ArgumentParser, cls: type[Settings], only: tuple[str, ...] | None = None) -> None:
    """A flag per leaf setting of `cls` (or of those named in `only`, by flat name); its help states
    meaning, default and allowed values.

    Defaults are left out of the namespace (SUPPRESS), so a command knows which flags were given."""
    for path, flat, f, hint, owner in leaves(cls):
        if only is not None and flat not in only:
            continue
        meta = f.metadata
        flag = "--" + flat.replace("_", "-")
        names = [flag, *("--" + a.replace("_", "-") for a in meta.get("aliases", ()))]
        default = meta.get("shown_default") or _shown(get(cls(), path))
        text = f"{meta['help']} (default: {default}; {allowed(hint, meta)})".replace("%", "%%")
        common = dict(dest=flat, default=argparse.SUPPRESS, help=text)
        if hint is bool:
            parser.add_argument(*names, action=argparse.BooleanOptionalAction, **common)
        elif meta.get("repeat"):
            element = typing.get_args(hint)[0]
            parser.add_argument(*names, action="append", type=_converter(flag, element, meta), metavar="TEXT",
                                **common)
        else:
            parser.add_argument(*names, type=_converter(flag, hint, meta), metavar=flat.upper(), **common)


def _shown(value) -> str:
    if isinstance(value, tuple):
        return ",".join(_shown(v) if not isinstance(v, tuple) else "=".join(map(str, v)) for v in value) or "none"
    return "none" if value is None else str(value).lower() if isinstance(value, bool) else str(value)


def given(args, cls: type[Settings]) -> dict:
    """The flags of `cls` given on the command line, by flat name."""
    values = {flat: getattr(args, flat) for _, flat, *_ in leaves(cls) if hasattr(args, flat)}
    return {k: tuple(v) if isinstance(v, list) else v for k, v in values.items()}  # repeated flags


def settings(args, cls: type[Settings], base=None):
    return build(cls, given(args, cls), base)


# ---- Ctrl-C ------------------------------------------------------------------------------------

_interrupt_note = {"text": ""}


@contextlib.contextmanager
def interrupt_guard(command: str):
    """Ctrl-C prints one line and exits 130 at once, even inside a long compilation or load.

    The signal's wake-up byte is read by a watcher thread, which does not wait for the main thread
    to return to Python (it may be inside XLA for minutes). Every file jaxprompt writes is atomic
    and checkpoints are committed by one rename, so stopping anywhere keeps the last commit."""
    if threading.current_thread() is not threading.main_thread():
        yield
        return
    read_fd, write_fd = os.pipe()
    os.set_blocking(write_fd, False)
    previous_fd = signal.set_wakeup_fd(write_fd, warn_on_full_buffer=False)
    previous_handler = signal.signal(signal.SIGINT, lambda *_: None)  # the watcher acts

    def watch():
        while True:
            data = os.read(read_fd, 1)
            if not data:  # the guard was closed
                return
            if data[0] == signal.SIGINT:
                os.write(2, f"{PROG} {command}: interrupted{_interrupt_note['text']}\n".encode())
                os._exit(130)

    threading.Thread(target=watch, name="jaxprompt-interrupt", daemon=True).start()
    try:
        yield
    finally:
        signal.set_wakeup_fd(previous_fd)
        signal.signal(signal.SIGINT, previous_handler)
        os.close(write_fd)  # ends the watcher
        _interrupt_note["text"] = ""


# ---- commands --------------------------------------------------------------------------------------

def cmd_train(args) -> int:
    from jaxprompt.run import check_run_dir, differences, read_run_info, train_prompt

    options = settings(args, RunOptions)
    config = settings(args, TrainConfig)
    if options.resume:
        if options.out is None:
            raise CLIError("--resume needs --out RUN_DIR: the run to continue")
        check_run_dir(options.out, resume=True)
        stored = read_run_info(options.out)["config"]
        explicit = build(TrainConfig, given(args, TrainConfig), stored)
        if explicit != stored:
            raise CLIError(f"{differences(explicit, stored)[0]} in {options.out}: --resume continues the run with its "
                           "stored settings (drop the flag, or replace the run with --overwrite)")
        config = stored

    def started(run_dir: str) -> None:
        _interrupt_note["text"] = (f"; {run_dir} keeps its last committed checkpoint "
                                   f"(continue with: jaxprompt train --out {run_dir} --resume)")

    train_prompt(config, options, started=started)  # names the default run directory (process 0's clock)
    return 0


def _load(args, every_member: bool = False):
    """(session, prompt, info) of the run; of a population, member --member's prompt (or with
    `every_member` and no --member, every member's, stacked)."""
    from jaxprompt.run import load_run

    load = settings(args, LoadOptions)
    session, prompt, info = load_run(args.run_dir, which=load.which, model=load.model, cache=load.cache,
                                     member=load.member)
    K = len(info["members"])
    if K and load.member is None and not every_member:
        raise CLIError(f"{args.run_dir} trained {K} prompts (--seeds {K}): choose one with --member 0..{K - 1}")
    return session, prompt, info


def _task_sessions(session, prompt, only: str | None = None):
    """(session, prompt) per task of the run (one for a single-task run)."""
    tasks = session.all_tasks
    if only is not None:
        names = [t.name for t in tasks]
        if only not in names:
            raise CLIError(f"--task {only!r}: this run's tasks are {', '.join(names)}")
        return [session.task_session(names.index(only), prompt)]
    return [session.task_session(i, prompt) for i in range(len(tasks))]


def _writable_file(flag: str, path: str | None) -> None:
    if path is not None and os.path.isdir(path):
        raise CLIError(f"{flag} {path} is a directory; give a file name")


def cmd_eval(args) -> int:
    from jaxprompt.evaluate import evaluate_prompts, format_samples, format_table, population_results
    from jaxprompt.files import atomic_write
    from jaxprompt.population import member

    opts = settings(args, EvalOptions)
    _writable_file("--json", opts.json)
    session, prompt, info = _load(args, every_member=True)
    load = settings(args, LoadOptions)
    K = len(info["members"]) if load.member is None else 0  # every member of a population
    rows_per_task = []
    for task in session.all_tasks:
        rows = task.load(seed=info["config"].data_seed)[opts.split]
        rows_per_task.append(rows[: opts.examples] if opts.examples is not None else rows)
    prompts = [member(prompt, k) for k in range(K)] if K else [prompt]
    label = f"learned ({load.which}" + (f", member {load.member})" if load.member is not None else ")")
    per_prompt = evaluate_prompts(session, rows_per_task, prompts, label=label, baseline=opts.baseline)
    results = population_results(per_prompt) if K else per_prompt[0]
    print(format_table(results))
    print()
    print(format_samples(results[-1]))
    if K:
        print(f"\n(mean ± sample standard deviation over {K} members; samples of member 0)")
    if opts.json is not None:
        atomic_write(opts.json, json.dumps({"results": [r.summary() for r in results]}, indent=2))
    return 0


def cmd_lm_eval(args) -> int:
    """lm-evaluation-harness tasks on a run's learned prompt (or, with --bare, its model alone)."""
    from jaxprompt.files import atomic_write
    from jaxprompt.lm_eval_backend import JaxPromptLM, require_lm_eval, run_lm_eval
    from jaxprompt.run import load_run

    require_lm_eval()
    if args.include_path is not None and not os.path.isdir(args.include_path):
        raise CLIError(f"--include-path {args.include_path} is not a directory")
    load = settings(args, LoadOptions)
    session, prompt, info = load_run(args.run_dir, which=load.which, model=load.model, cache=load.cache,
                                     member=load.member)
    if info["members"] and load.member is None and not args.bare:
        raise CLIError(f"{args.run_dir} trained {len(info['members'])} prompts (--seeds): choose one with --member "
                       f"0..{len(info['members']) - 1}")
    lm = JaxPromptLM(session, prompt, batch_size=args.batch_size, learned=not args.bare)
    tasks = [t.strip() for t in args.tasks.split(",") if t.strip()]
    results = run_lm_eval(lm, tasks, args.include_path, args.limit, args.num_fewshot)
    from lm_eval.utils import make_table

    print(make_table(results))
    path = os.path.join(args.run_dir, "lm_eval_bare.json" if args.bare else "lm_eval.json")
    atomic_write(path, json.dumps({k: results[k] for k in ("results", "versions", "n-shot", "configs")
                                   if k in results}, indent=2, default=str))
    print(f"lm-eval results: {path}")
    return 0


def add_lm_eval_parser(run_parser) -> None:
    q = run_parser("lm-eval", "lm-evaluation-harness tasks on a trained prompt (pip install 'jaxprompt[eval]')")
    q.add_argument("--tasks", required=True, help="comma-separated lm-eval task names")
    q.add_argument("--include-path", default=None, help="a directory of extra lm-eval task YAML files")
    q.add_argument("--limit", type=int, default=None, help="at most N examples per task")
    q.add_argument("--num-fewshot", type=int, default=None, help="few-shot examples (default: the task's)")
    q.add_argument("--batch-size", type=int, default=16, help="contexts scored per batch")
    q.add_argument("--bare", action="store_true", help="the run's model without its prompt")
    q.set_defaults(fn=cmd_lm_eval)


def _parse_inputs(session, texts: tuple[str, ...] | list[str]) -> list[dict]:
    """`word1=hot`, a JSON object, or a bare value for the task's single input field."""
    inputs = [f for f in session.task.fields if f not in session.task.template.target_fields]
    rows = []
    for text in texts:
        text = text.strip()
        if not text:
            continue
        if text.startswith("{"):
            try:
                row = json.loads(text)
            except ValueError:
                raise CLIError(f"input {text!r} is not a JSON object") from None
            if not isinstance(row, dict):
                raise CLIError(f"input {text!r} is not a JSON object")
        elif "=" in text and text.split("=", 1)[0] in inputs:
            row = dict(part.split("=", 1) for part in text.split(";") if "=" in part)
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
    from jaxprompt.evaluate import inference_form
    from jaxprompt.models.generate import Sampling, generate
    from jaxprompt.prompts.apply import prompt_inputs

    opts = settings(args, GenerateOptions)
    session, prompt, _ = _load(args)
    if len(session.all_tasks) > 1 and opts.task is None:
        raise CLIError(f"this run has several tasks ({', '.join(t.name for t in session.all_tasks)}): "
                       "choose one with --task")
    session, prompt = _task_sessions(session, prompt, opts.task)[0]
    texts = opts.text if opts.text else sys.stdin.read().splitlines()
    rows = _parse_inputs(session, texts)
    if not rows:
        raise CLIError("no input: pass --text or lines on stdin")
    n_new = opts.max_new_tokens if opts.max_new_tokens is not None else session.task.max_new_tokens
    encoded = session.encode(rows, with_target=False, new_tokens=n_new)
    method, serving = inference_form(session, prompt)
    batch = collate(encoded, session.pad_id, padding="left")
    inputs = prompt_inputs(session.model, session.frozen, method, serving, batch)
    tokens, _ = generate(session.model, session.frozen, inputs.embeds, batch["mask"], max_new_tokens=n_new,
                         sampling=Sampling(opts.temperature, opts.top_k, opts.top_p), rng=jax.random.key(opts.seed),
                         eos_token_id=session.tokenizer.eos_token_id, prefix=inputs.prefix, adapter=inputs.adapter)
    for row, out in zip(rows, np.asarray(tokens)):
        ids = list(out)
        if session.tokenizer.eos_token_id in ids:
            ids = ids[: ids.index(session.tokenizer.eos_token_id)]
        print(f"{session.task.template.render_hard(row, '[prompt]')}{session.tokenizer.decode(ids)}")
    return 0


def cmd_inspect(args) -> int:
    import dataclasses

    from jaxprompt.evaluate import evaluate, format_table
    from jaxprompt.interpret import (format_neighbours, nearest_vocabulary, plot_embedding_space, projected_prompt,
                                     prompt_vectors)

    opts = settings(args, InspectOptions)
    _writable_file("--plot", opts.plot)
    session, prompt, info = _load(args)
    for single, task_prompt in _task_sessions(session, prompt):
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


def cmd_export(args) -> int:
    from jaxprompt.export import export_peft, export_plain

    export = export_peft if settings(args, ExportOptions).to == "peft" else export_plain
    session, prompt, info = _load(args)
    print(f"exported to {export(session, prompt, args.out_dir, base_model=info['model_dir'])}")
    return 0


def cmd_import(args) -> int:
    from jaxprompt.export import import_peft

    opts = settings(args, ImportOptions)
    run_dir = import_peft(args.adapter_dir, args.out_dir, task=opts.task, model=opts.model, overwrite=opts.overwrite)
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

    options = settings(args, RunOptions)
    if options.out is not None or options.resume:
        raise CLIError("sweep writes one run per trial under --sweep-dir: --out and --resume do not apply")
    sweep = settings(args, SweepOptions)
    base = settings(args, TrainConfig)
    if base.seeds != 1:
        raise CLIError("sweep trains one prompt per trial: --seeds does not apply (search seeds with --trial-seeds, "
                       "train trials together with --population)")
    best, table = sweep_prompt_length(base, sweep.lengths, sweep.trials, sweep.sweep_dir, options, lrs=sweep.lrs,
                                      inits=sweep.inits, seeds=sweep.trial_seeds, population=sweep.population)
    print(table)
    print(f"best prompt length: {best}")
    return 0


# the training settings a memory plan depends on, with their own flags
PLAN_TRAIN_SETTINGS = ("model", "dtype", "batch_size", "prompt_length", "accumulate", "remat")


def cmd_plan(args) -> int:
    from jaxprompt.plan import (candidate_meshes, comparison, human, model_config, parse_bytes, plans,
                                smallest_model_axis)

    opts = settings(args, PlanOptions)
    config = settings(args, TrainConfig)
    model_config(config.model)  # an unknown model is one line, before anything compiles
    batch, micro = config.data.batch_size, config.data.accumulate
    memory = parse_bytes(opts.device_memory) if opts.device_memory is not None else None
    meshes = candidate_meshes(opts.devices, batch // micro)  # data axes that split every micro-batch evenly
    if opts.mesh is not None:
        sizes = parse_mesh(opts.mesh)
        chosen = (sizes["data"], sizes["model"])
        if chosen not in meshes:
            raise CLIError(f"--batch-size {batch} is not divisible by the data axis ({chosen[0]}) x --accumulate "
                           f"{micro}")
        wanted = [chosen] + ([m for m in meshes if m != chosen] if memory is not None else [])
    else:
        wanted = meshes
    found = plans(config.model, opts.devices, wanted, batch, prompt_length=config.method.prompt_length,
                  text_tokens=opts.text_tokens, dtype=config.dtype, micro_batches=micro, remat=config.remat)
    print(found[0].table(memory) if opts.mesh is not None else comparison(found, memory, opts.device_memory))
    if memory is not None:
        best = smallest_model_axis(found, memory)
        if best is None:
            least = min(found, key=lambda p: p.total_bytes)
            print(f"\nno mesh over {opts.devices} device(s) fits {opts.device_memory} per device; the least memory, "
                  f"{human(least.total_bytes)}, is data={least.data},model={least.model_axis}")
        else:
            print(f"\nsmallest model axis that fits {opts.device_memory} per device: --mesh data={best.data},"
                  f"model={best.model_axis} ({human(best.total_bytes)} per device)")
    return 0


def build_parser() -> argparse.ArgumentParser:
    p = Parser(prog=PROG, description="Learn prompts by backpropagation against frozen LMs.")
    sub = p.add_subparsers(dest="command", required=True, parser_class=Parser)

    train = sub.add_parser("train", help="train a prompt on a task and compare it with the written prompt")
    add_settings(train, TrainConfig)
    add_settings(train, RunOptions)
    train.set_defaults(fn=cmd_train)

    def run_parser(name, help, *options):
        q = sub.add_parser(name, help=help)
        q.add_argument("run_dir", help="a run directory (from `jaxprompt train` or `jaxprompt import`)")
        for cls in (LoadOptions, *options):
            add_settings(q, cls)
        return q

    run_parser("eval", "evaluate a trained prompt (and the written prompt) on a split",
               EvalOptions).set_defaults(fn=cmd_eval)
    run_parser("generate", "generate with a trained prompt, from --text or stdin lines",
               GenerateOptions).set_defaults(fn=cmd_generate)
    run_parser("inspect", "nearest vocabulary tokens of each prompt vector; embedding-space plot",
               InspectOptions).set_defaults(fn=cmd_inspect)

    add_lm_eval_parser(run_parser)
    ex = run_parser("export", "export a trained prompt for PyTorch (PEFT adapter or plain tensors)", ExportOptions)
    ex.add_argument("out_dir", help="directory the adapter or tensors are written to")
    ex.set_defaults(fn=cmd_export)

    im = sub.add_parser("import", help="import a PEFT prompt adapter as a jaxprompt run")
    im.add_argument("adapter_dir", help="a PEFT prompt-learning adapter directory")
    im.add_argument("out_dir", help="the run directory to create")
    add_settings(im, ImportOptions)
    im.set_defaults(fn=cmd_import)

    sub.add_parser("tasks", help="list the built-in tasks").set_defaults(fn=cmd_tasks)

    sw = sub.add_parser("sweep", help="search the prompt length (and rate, initialisation, seed) with Optuna; "
                                      "trials of one length can train together; reports the best length")
    for cls in (TrainConfig, RunOptions, SweepOptions):
        add_settings(sw, cls)
    sw.set_defaults(fn=cmd_sweep)

    pl = sub.add_parser("plan", help="per-device memory of a training step on N devices, before the run: frozen "
                                     "weights, prompt and optimizer, temporaries; the smallest model axis that fits")
    add_settings(pl, TrainConfig, only=PLAN_TRAIN_SETTINGS)
    add_settings(pl, PlanOptions)
    pl.set_defaults(fn=cmd_plan)
    return p


def _errors() -> tuple[type[BaseException], ...]:
    """What bad input raises: reported in one line. Anything else is a bug and keeps its traceback."""
    from jaxprompt.checkpoint import CheckpointError as RunCheckpointError
    from jaxprompt.data import TemplateError
    from jaxprompt.distributed import DistributedError
    from jaxprompt.export import ExportError
    from jaxprompt.files import LockedError
    from jaxprompt.loop import NonFiniteLossError
    from jaxprompt.models.config import ConfigError
    from jaxprompt.models.convert import CheckpointError
    from jaxprompt.run import RunError
    from jaxprompt.tokenizer import TokenizerError

    return (CLIError, SettingError, TemplateError, ConfigError, CheckpointError, RunCheckpointError, TokenizerError,
            NonFiniteLossError, RunError, ExportError, LockedError, DistributedError)


def _quiet_abandoned_reads() -> None:
    """Orbax's background reads of a checkpoint that cannot be read finish later against its closed
    event loop, each reported as an unraisable 'Event loop is closed': noise after the one line that
    says what failed. Every other unraisable error is reported as before."""
    previous = sys.unraisablehook
    if getattr(previous, "jaxprompt", False):
        return

    def hook(unraisable):
        if isinstance(unraisable.exc_value, RuntimeError) and str(unraisable.exc_value) == "Event loop is closed":
            return
        previous(unraisable)

    hook.jaxprompt = True
    sys.unraisablehook = hook


def _os_error(e: OSError) -> str:
    where = f" ({e.filename})" if e.filename else ""
    return f"{e.strerror or type(e).__name__}{where}"


def main(argv=None) -> int:
    args = build_parser().parse_args(argv)
    os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")
    _quiet_abandoned_reads()
    with interrupt_guard(args.command):
        try:
            return args.fn(args)
        except OSError as e:  # read-only or full disk, a vanished file: the environment, in one line
            print(f"{PROG} {args.command}: error: {_os_error(e)}", file=sys.stderr)
            return 2
        except Exception as e:
            if not isinstance(e, _errors()):
                raise
            print(f"{PROG} {args.command}: error: {' '.join(str(e).split())}", file=sys.stderr)  # our own text
            return 2


if __name__ == "__main__":
    sys.exit(main())
