"""Which prompts the server serves: runs (each member of a population under its own name) and PEFT
adapters, loaded into one engine over one frozen model; a prompt for another model is refused.
"""
from __future__ import annotations

import os

from jaxprompt.serving.options import BadRequest, ServeOptions

# ---- prompts ------------------------------------------------------------------------------------

def named(spec: str) -> tuple[str, str]:
    """`NAME=PATH` or `PATH` (named after its directory)."""
    if "=" in spec and not os.path.exists(spec):
        name, path = spec.split("=", 1)
    else:
        name, path = os.path.basename(os.path.normpath(spec)), spec
    if not name:
        raise BadRequest(f"{spec!r}: a prompt needs a name")
    return name, path


def load_engine(runs: list[str], adapters: list[str], options: ServeOptions):
    """The engine over the served model, with every run's and adapter's prompt, and the bare model."""
    from jaxprompt.data.tasks import BUILTIN
    from jaxprompt.inference.engine import Engine
    from jaxprompt.models.loading import resolve
    from jaxprompt.paths import DEFAULT_MODEL
    from jaxprompt.prompts import make_method
    from jaxprompt.runs.layout import read_run_info
    from jaxprompt.session import Session

    specs = [named(r) for r in runs]
    first = read_run_info(specs[0][1]) if specs else None
    model_id = options.model or (first["model_dir"] if first else DEFAULT_MODEL)
    # the weights in the first run's dtype and quantization, as `jaxprompt generate` of that run loads them
    quantize = options.quantize if options.quantize != "run" else first["config"].quantize if first else "none"
    base = Session.load(model_id, BUILTIN["antonyms"], make_method("soft"),
                        dtype=first["config"].dtype if first else "float32", quantize=quantize)
    engine = Engine.of_session(base, max_batch=options.max_batch)
    engine.model_dir = os.path.realpath(resolve(model_id))
    engine.add(model_id, None)  # the bare model: raw text
    for name, path in specs:
        add_run(engine, base, name, path, options.which)
    for spec in adapters:
        add_adapter(engine, base, *named(spec), which=options.which)
    return engine, base


def add_run(engine, base, name: str, path: str, which: str = "best") -> list[str]:
    """Serves the run at `path` as `name` (a population's member k as `name@k`, a multi-task
    run's task t as `name/t`). Refused, named, if it is not a run or belongs to another model."""
    from jaxprompt.models.loading import resolve
    from jaxprompt.prompts import method_from_spec
    from jaxprompt.runs.layout import RunError, read_run_info, task_of_spec
    from jaxprompt.runs.load import load_prompt, member_of
    from jaxprompt.session import Session

    if name in engine.prompts:
        raise BadRequest(f"a prompt named {name!r} is already served; DELETE /v1/prompts/{name} first", 409, "name")
    try:
        info = read_run_info(path)
    except RunError as e:
        raise BadRequest(str(e), param="path") from None
    try:
        own = os.path.realpath(resolve(info["model_dir"]))
    except Exception:
        own = info["model_dir"]
    if own != engine.model_dir:
        raise BadRequest(f"{path} was trained on {info['model_dir']}; this server serves {engine.model_id}",
                         param="path")
    tasks = [task_of_spec(spec) for spec in info["tasks"]]
    session = Session(engine.model, engine.frozen, engine.tokenizer, tasks[0], method_from_spec(info["method"]),
                      engine.model_id, engine.prompt_cache, tuple(tasks) if len(tasks) > 1 else (),
                      weights_id=base.fingerprint())
    K = len(info["members"])
    prompt = load_prompt(path, session, which, members=K or None)
    views = [(f"{name}@{k}", member_of(prompt, k)) for k in range(K)] if K else [(name, prompt)]
    added = []
    for view_name, view in views:
        if len(tasks) > 1:
            for t, task in enumerate(tasks):
                single, task_prompt = session.task_session(t, view)
                engine.add(f"{view_name}/{task.name}", single, task_prompt)
                added.append(f"{view_name}/{task.name}")
        else:
            engine.add(view_name, session, view)
            added.append(view_name)
    return added


def add_adapter(engine, base, name: str, path: str, which: str = "best") -> list[str]:
    """A PEFT adapter, through `jaxprompt import` into a temporary run."""
    import tempfile

    from jaxprompt.runs.export import ExportError
    from jaxprompt.runs.peft_import import import_peft

    with tempfile.TemporaryDirectory() as tmp:
        try:
            run = import_peft(path, os.path.join(tmp, name), model=engine.model_dir)
        except ExportError as e:
            raise BadRequest(str(e), param="path") from None
        return add_run(engine, base, name, run, "last")
