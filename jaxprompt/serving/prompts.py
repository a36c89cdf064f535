"""Where served prompts come from: runs (each member of a population as NAME@k, each task of a
multi-task run as NAME/TASK) and PEFT adapters, by name (`names_of`, `scan` of a --prompts
directory), read onto the host (`read`) over the server's one frozen model; a prompt for another
model is refused, named.
"""
from __future__ import annotations

import dataclasses
import os

import jax
import numpy as np

from jaxprompt.serving.options import BadRequest, ServeOptions

ADAPTER_CONFIG = "adapter_config.json"


@dataclasses.dataclass(frozen=True)
class Source:
    """One servable prompt: a run's (member `member`, task `task`) or a PEFT adapter's."""

    path: str
    adapter: bool = False
    member: int | None = None
    task: str | None = None


def named(spec: str) -> tuple[str, str]:
    """`NAME=PATH` or `PATH` (named after its directory)."""
    if "=" in spec and not os.path.exists(spec):
        name, path = spec.split("=", 1)
    else:
        name, path = os.path.basename(os.path.normpath(spec)), spec
    if not name:
        raise BadRequest(f"{spec!r}: a prompt needs a name")
    return name, path


def names_of(name: str, path: str) -> dict[str, Source]:
    """The prompts `path` holds, by name: a run's (`name`, `name@k` for a population's members, then
    `/TASK` for a multi-task run's tasks) or an adapter's (`name`). Refused, named, if it is neither."""
    from jaxprompt.runs.layout import RunError, read_run_info

    if os.path.isfile(os.path.join(path, ADAPTER_CONFIG)):
        return {name: Source(path, adapter=True)}
    try:
        info = read_run_info(path)
    except RunError as e:
        raise BadRequest(str(e), param="path") from None
    K = len(info["members"])
    views = [(f"{name}@{k}", k) for k in range(K)] if K else [(name, None)]
    tasks = [spec.get("name") for spec in info["tasks"]] if len(info["tasks"]) > 1 else [None]
    return {f"{view}/{task}" if task else view: Source(path, member=k, task=task)
            for view, k in views for task in tasks}


def scan(directory: str, seen: dict[str, tuple[int, dict[str, Source]]]) -> dict[str, Source]:
    """Every prompt of the runs and adapters directly under `directory`. `seen`: each entry's names
    as last read, by directory name with its mtime (a run's files change its mtime: run.json and
    checkpoints are committed by renames in it), so a rescan reads only what changed."""
    out = {}
    try:
        entries = sorted(os.scandir(directory), key=lambda e: e.name)
    except OSError:
        return out
    for entry in entries:
        if not entry.is_dir() or entry.name.startswith("."):
            continue
        names = entry_names(directory, entry.name, seen)
        out.update({k: v for k, v in names.items() if k not in out})
    return out


def entry_names(directory: str, entry: str, seen: dict) -> dict[str, Source]:
    """The prompts of `directory/entry` (none if it holds no run or adapter), cached by its mtime."""
    if not entry or os.sep in entry or entry in (".", "..") or (os.altsep and os.altsep in entry):
        return {}
    path = os.path.join(directory, entry)
    try:
        mtime = os.stat(path).st_mtime_ns
    except OSError:
        return {}
    cached = seen.get(entry)
    if cached is None or cached[0] != mtime:
        try:
            cached = (mtime, names_of(entry, path))
        except BadRequest:  # not a run (yet): nothing to serve
            cached = (mtime, {})
        seen[entry] = cached
    return cached[1]


def representatives(directory: str, seen: dict) -> list[str]:
    """One prompt of each kind under `directory` (a method and length, or an adapter type and
    length; the template for a run): loaded before a warm-up, their shapes are the ones it compiles."""
    from jaxprompt.files import read_json_object

    kinds = {}
    for name, source in scan(directory, seen).items():
        try:
            if source.adapter:
                config = read_json_object(os.path.join(source.path, ADAPTER_CONFIG), ValueError, "an adapter config")
                length = config.get("num_virtual_tokens") or config.get("adapter_len")
                kind = ("adapter", config.get("peft_type"), length)
            else:
                info = read_json_object(os.path.join(source.path, "run.json"), ValueError, "a run description")
                kind = ("run", json_key(info.get("method")), json_key(info.get("tasks")))
        except (ValueError, OSError):
            continue
        kinds.setdefault(kind, name)
    return list(kinds.values())


def json_key(value) -> str:
    import json

    return json.dumps(value, sort_keys=True)


def read(engine, base, sources: dict[str, Source], which: str) -> dict[str, tuple]:
    """(session, prompt on the host) of each named source, all from one path: a run's checkpoint is
    read once for all its members and tasks."""
    paths = {s.path for s in sources.values()}
    assert len(paths) == 1, paths
    first = next(iter(sources.values()))
    if first.adapter:
        return {name: _adapter(engine, base, first.path) for name in sources}
    session, prompt = _run(engine, base, first.path, which)
    out = {}
    for name, s in sources.items():
        view = prompt if s.member is None else jax.tree.map(lambda x: x[s.member], prompt)
        if s.task is None:
            out[name] = (session, view)
        else:
            t = [task.name for task in session.all_tasks].index(s.task)
            out[name] = session.task_session(t, view)
    return {name: (session, jax.tree.map(np.asarray, p)) for name, (session, p) in out.items()}


def _run(engine, base, path: str, which: str):
    from jaxprompt.models.loading import resolve
    from jaxprompt.prompts import method_from_spec
    from jaxprompt.runs.layout import RunError, read_run_info, task_of_spec
    from jaxprompt.runs.load import load_prompt

    try:
        info = read_run_info(path)
    except RunError as e:
        raise BadRequest(str(e), param="path") from None
    try:
        own = os.path.realpath(resolve(info["model_dir"]))
    except Exception:  # not on this machine, or not a model: named below
        own = info["model_dir"]
    if own != engine.model_dir:
        raise BadRequest(f"{path} was trained on {info['model_dir']}; this server serves {engine.model_id}",
                         param="path")
    tasks = [task_of_spec(spec) for spec in info["tasks"]]
    session = _session(engine, base, tasks[0], method_from_spec(info["method"]), tuple(tasks) if len(tasks) > 1 else ())
    K = len(info["members"])
    return session, load_prompt(path, session, which, members=K or None)  # a population: stacked [K, ...]


def adapter_task():
    """The task an adapter is served on: its text alone after the prompt (`{prompt}{text}`), which
    is where PEFT puts a prompt (an adapter carries no template of its own)."""
    from jaxprompt.data.tasks import Task
    from jaxprompt.data.templates import Template

    return Task(name="text", template=Template("{prompt}{text}", "{continuation}"), data="none",
                description="a PEFT adapter's input: its text, after the prompt")


def _adapter(engine, base, path: str):
    """A PEFT adapter's prompt, read straight from its safetensors, on `adapter_task`."""
    from jaxprompt.runs.export import ExportError
    from jaxprompt.runs.peft_import import prompt_from_peft, read_peft_adapter

    try:
        config, tensors = read_peft_adapter(path)
        method, prompt = prompt_from_peft(config, tensors, engine.config)
    except ExportError as e:
        raise BadRequest(str(e), param="path") from None
    task = adapter_task()
    reason = method.peft_incompatibility(task.template)
    if reason:
        raise BadRequest(f"{path}: {reason}", param="path")
    return _session(engine, base, task, method), prompt


def _session(engine, base, task, method, tasks=()):
    from jaxprompt.session import Session

    return Session(engine.model, engine.frozen, engine.tokenizer, task, method, engine.model_id, engine.prompt_cache,
                   tasks, weights_id=base.fingerprint())


def load_engine(runs: list[str], options: ServeOptions):
    """The engine over the served model (the bare model served under its own name) and a session
    over its weights (which keys the prompt cache)."""
    from jaxprompt.data.tasks import BUILTIN
    from jaxprompt.inference.engine import Engine
    from jaxprompt.models.loading import resolve
    from jaxprompt.paths import DEFAULT_MODEL
    from jaxprompt.prompts import SoftPrompt
    from jaxprompt.runs.layout import RunError, read_run_info
    from jaxprompt.session import Session

    first = None
    if options.model is None and runs:
        try:
            first = read_run_info(named(runs[0])[1])
        except RunError as e:
            raise BadRequest(str(e), param="path") from None
    elif options.model is None and options.prompts:  # the directory's first run
        run = next((s.path for s in scan(options.prompts, {}).values() if not s.adapter), None)
        first = read_run_info(run) if run is not None else None
    model_id = options.model or (first["model_dir"] if first else DEFAULT_MODEL)
    # the weights in the first run's dtype and quantization, as `jaxprompt generate` of that run loads them
    quantize = options.quantize if options.quantize != "run" else first["config"].quantize if first else "none"
    base = Session.load(model_id, BUILTIN["antonyms"], SoftPrompt(),
                        dtype=first["config"].dtype if first else "float32", quantize=quantize)
    base.prompt_cache.capacity = 2 * options.max_resident  # a template's head and a raw text's per prompt
    engine = Engine.of_session(base, max_batch=options.max_batch)
    engine.model_dir = os.path.realpath(resolve(model_id))
    engine.add(model_id, None)  # the bare model: raw text
    return engine, base
