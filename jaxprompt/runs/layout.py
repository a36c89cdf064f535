"""The run directory: its layout, who may write it (lock; refuse, resume or overwrite), and run.json.

Layout (default `checkpoints/<task>-<method>-<time>`):
    run.json          the TrainConfig (nested, config.py) and what it resolved to (tasks, method)
    checkpoints.json  which checkpoints are committed (checkpoint.py)
    last/, best/      Orbax train-state checkpoints (the frozen LM is never saved)
    metrics.jsonl     train / validation loss per step (training/loop.py)
    curve.png         the training curve (training/curve.py)
    results.json      learned vs written test metrics and sample predictions (a population's:
                      mean ± std over members, and every member's own)
    .lock             held by the process writing the run

A directory that holds a run is never written without `resume` (continue it, with its stored
settings) or `overwrite` (replace it as a whole); two runs never write one directory at once.
Every file is written atomically (files.py). Training, loading, PEFT import and the commands use this module.
"""

from __future__ import annotations

import dataclasses
import json
import os
import shutil

from jaxprompt import __version__
from jaxprompt.config import Member, MethodConfig, TrainConfig
from jaxprompt.data.tasks import BUILTIN, Task, task_from_dict
from jaxprompt.files import DirectoryLock, atomic_write, read_json_object, remove_stale_temporaries
from jaxprompt.paths import new_run_dir
from jaxprompt.prompts import PromptMethod, method_spec
from jaxprompt.runs.checkpoint import RECORD
from jaxprompt.settings import SettingError, from_dict, get, label, leaves, to_dict

RUN_INFO = "run.json"
RESULTS = "results.json"
METRICS = "metrics.jsonl"
CURVE = "curve.png"
RUN_FILES = (RUN_INFO, RECORD, "last", "best", METRICS, CURVE, RESULTS)
_INFO_KEYS = ("config", "model_dir", "tasks", "steps", "n_virtual", "method", "jaxprompt")
_OPTIONAL_INFO_KEYS = ("format", "imported_from", "members")

# run.json's format: 3 since each method declares its own settings (prompts/settings.py): an
# `init_from` that a method never used is recorded as it ran, and settings added since (init_scale,
# tau_start, init_logit, metric) take the values every earlier run had; 2 since the method settings
# took the methods' own names; 1 before (no "format" key). `read_run_info` reads every format.
FORMAT = 3
# format 1's names of the method settings; its prefix_top_layers and adapter_layers are top_layers
_FORMAT_1_METHOD_NAMES = {"prompt_length": "length", "init": "init_from", "encoder_hidden": "hidden",
                          "prefix_reparam": "reparam_hidden"}
_FORMAT_1_TOP_LAYERS = ("prefix_top_layers", "adapter_layers")
# settings added after runs were first stored, with the value every run written before them had
_LATER_SETTINGS = {"split_seed": None, "seeds": 1, "loss": "lm", "quantize": "none"}
_METHOD_SETTINGS_SINCE_FORMAT_3 = ("init_scale", "tau_start", "init_logit", "metric")


class RunError(ValueError):
    """A run directory that cannot be used as asked (one line: what is wrong, what to do)."""


# ---- who may write it ------------------------------------------------------------------------------

def default_run_dir(config: TrainConfig) -> str:
    name = "+".join(os.path.splitext(os.path.basename(t))[0] for t in config.tasks)
    return new_run_dir(f"{name}-{config.method.name}")


def holds_run(run_dir: str) -> bool:
    return any(os.path.exists(os.path.join(run_dir, name)) for name in RUN_FILES)


def check_run_dir(run_dir: str, resume: bool = False, overwrite: bool = False, flag: str = "--out") -> None:
    """Refuses, in one line and touching nothing, a `run_dir` that may not be written as asked: an
    existing run without `resume`/`overwrite`, nothing to resume, a file, a directory of other files."""
    if os.path.exists(run_dir) and not os.path.isdir(run_dir):
        raise RunError(f"{flag} {run_dir} is a file, not a directory")
    existing = holds_run(run_dir)
    if resume and not existing:
        raise RunError(f"nothing to resume in {run_dir}: it holds no run; drop --resume to start one there")
    if existing and not (resume or overwrite):
        how = "pass --resume to continue it, or --overwrite to replace it" if flag == "--out" \
            else "pass --overwrite to replace it"
        raise RunError(f"{run_dir} already holds a run: {how}")
    others = [n for n in os.listdir(run_dir) if n != DirectoryLock.NAME] if os.path.isdir(run_dir) else []
    if others and not existing:
        raise RunError(f"{flag} {run_dir} is a directory of other files, not a jaxprompt run; choose an empty or "
                       "new directory")


def open_run_dir(run_dir: str, resume: bool = False, overwrite: bool = False, flag: str = "--out") -> DirectoryLock:
    """`check_run_dir`, then locks `run_dir` (and with `overwrite`, empties it)."""
    check_run_dir(run_dir, resume, overwrite, flag)
    os.makedirs(run_dir, exist_ok=True)
    lock = DirectoryLock(run_dir)
    try:
        check_run_dir(run_dir, resume, overwrite, flag)  # what the lock's last holder may have done meanwhile
        if overwrite:
            for name in os.listdir(run_dir):
                if name != DirectoryLock.NAME:
                    path = os.path.join(run_dir, name)
                    shutil.rmtree(path) if os.path.isdir(path) and not os.path.islink(path) else os.remove(path)
        remove_stale_temporaries(run_dir)
    except BaseException:
        lock.release()
        raise
    return lock


def differences(config: TrainConfig, stored: TrainConfig) -> list[str]:
    """Settings that differ, as 'flag given vs stored' lines (what `resume` refuses)."""
    out = []
    for path, _, f, _, owner in leaves(TrainConfig):
        a, b = get(config, path), get(stored, path)
        if a != b:
            out.append(f"{label(owner, f, get(config, path[:-1]))} {a} differs from the stored {b}")
    return out


# ---- run.json --------------------------------------------------------------------------------------

def run_info(config: TrainConfig, model_dir: str, tasks, steps: int, n_virtual: int, method: PromptMethod,
             members: tuple[Member, ...] = (), **extra) -> dict:
    """What run.json holds: the settings, and what they resolved to (a population's members)."""
    return {"format": FORMAT, "config": to_dict(config),
            **({"members": [dataclasses.asdict(m) for m in members]} if members else {}),
            "model_dir": os.path.abspath(model_dir) if os.path.isdir(model_dir) else model_dir,
            "tasks": [task_spec(t) for t in tasks], "steps": steps, "n_virtual": n_virtual,
            "method": method_spec(method), "jaxprompt": __version__, **extra}


def write_run_info(run_dir: str, info: dict) -> None:
    atomic_write(os.path.join(run_dir, RUN_INFO), json.dumps(info, indent=2))


def read_run_info(run_dir: str) -> dict:
    """run.json, checked: a missing or unknown key, or a setting out of range, is one line naming it
    (a setting newer than the run takes the value the run had: `_LATER_SETTINGS`).
    `info["config"]` is the `TrainConfig`, `info["members"]` a population's `Member`s (or ())."""
    path = os.path.join(run_dir, RUN_INFO)
    if not os.path.isfile(path):
        raise RunError(f"{run_dir} is not a jaxprompt run directory: no {RUN_INFO}")
    info = read_json_object(path, RunError, "a run description")
    missing = [k for k in _INFO_KEYS if k not in info]
    extra = sorted(set(info) - set(_INFO_KEYS) - set(_OPTIONAL_INFO_KEYS))
    if missing or extra:
        raise RunError(f"{path} {'lacks the key ' + repr(missing[0]) if missing else 'has an unknown key ' + repr(extra[0])}")
    info = _upgraded(info, path)
    if isinstance(info["config"], dict):
        info["config"] = {**_LATER_SETTINGS, **info["config"]}
    try:
        info["config"] = from_dict(TrainConfig, info["config"], where=f"{path}: config")
        info["members"] = tuple(Member(**m) for m in info.get("members", ()))
    except (SettingError, TypeError) as e:
        raise RunError(f"{path}: {e}" if isinstance(e, TypeError) else str(e)) from None
    return info


def task_spec(task: Task) -> dict:
    """A task as plain data (run.json), built-in or from a file."""
    spec = dataclasses.asdict(task)
    spec["template"], spec["target"] = task.template.text, task.template.target
    return {k: list(v) if isinstance(v, tuple) else v for k, v in spec.items()}


def task_of_spec(spec: dict) -> Task:
    builtin = BUILTIN.get(spec.get("name"))
    if builtin is not None and task_spec(builtin) == spec:
        return builtin
    return task_from_dict(spec)


def _upgraded(info: dict, path: str) -> dict:
    """run.json of any format as today's (without its "format" key)."""
    info = dict(info)
    version = info.pop("format", 1)
    if not isinstance(version, int) or isinstance(version, bool) or not 1 <= version <= FORMAT:
        raise RunError(f"{path} has format {version!r}; this jaxprompt reads formats 1 to {FORMAT} (a newer "
                       "jaxprompt wrote it?)")
    method = info["config"].get("method") if isinstance(info["config"], dict) else None
    if version == 1 and isinstance(method, dict):
        renamed = {_FORMAT_1_METHOD_NAMES.get(k, k): v for k, v in method.items() if k not in _FORMAT_1_TOP_LAYERS}
        given = [method[k] for k in _FORMAT_1_TOP_LAYERS if k in method]
        if given:  # at most one was set: each applied to its own method only
            renamed["top_layers"] = next((v for v in given if v is not None), None)
        info["config"] = {**info["config"], "method": renamed}
    if version <= 2 and isinstance(info["config"], dict) and isinstance(info["config"].get("method"), dict):
        info["config"] = {**info["config"], "method": _format_2_method_settings(info["config"]["method"])}
        if isinstance(info.get("method"), dict):
            info["method"] = _format_2_method_spec(info["method"])
    return info


def _format_2_method_settings(method: dict) -> dict:
    """A format-2 run's method settings as it ran: adaption prompts took no init; prefix tuning and
    PEZ drew random word tokens whatever `--init` said (prefix tuning started from a text with
    `--init text`); the settings added since had one value then, their default now."""
    name, init = method.get("name"), method.get("init_from")
    defaults = {f.name: f.default for f in dataclasses.fields(MethodConfig)}
    out = {name: defaults[name] for name in _METHOD_SETTINGS_SINCE_FORMAT_3} | method
    if name == "adaption":
        out["init_from"] = None
    elif name == "prefix":
        out["init_from"] = "text" if init == "text" else "sampled_vocab"
    elif name == "pez" and init == "vocab_normal":
        out["init_from"] = "sampled_vocab"
    return out


def _format_2_method_spec(spec: dict) -> dict:
    """A format-2 method as plain data: prefix tuning started from its `init_ids` where it had some."""
    spec = {k: _format_2_method_spec(v) if isinstance(v, dict) else v for k, v in spec.items()}
    if spec.get("name") == "prefix" and "init_from" not in spec:
        spec["init_from"] = "text" if spec.get("init_ids") else "sampled_vocab"
    return spec
