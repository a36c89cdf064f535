"""Every setting of jaxprompt, declared once.

A setting is a field of a frozen dataclass that carries its default, its help text and its
allowed values (`setting(...)`). From these declarations

- cli.py generates the flags (`--lr`, `--steps`, ...) and their `--help` lines,
- `validate` (run by every settings dataclass on construction) checks each value against its
  range before anything runs, with one message naming the setting and its allowed values,
- run.json stores a `TrainConfig` nested, and `from_dict` reads it back strictly.

What a run *is* (`TrainConfig`, stored in run.json):

    TrainConfig   tasks, model, dtype, seed, split_seed, seeds, baseline, remat, shared_prefix
      method      MethodConfig      the prompt method and its shape
      optimizer   OptimizerConfig   Optax optimizer, schedule, clipping, per-part rates
      loop        LoopConfig        steps / epochs, validation, early stopping, checkpoints
      data        DataConfig        batch size, micro-batches, example caps

How one invocation runs it (`RunOptions`: output directory, resume, devices, ...) is not stored.
Flags are the flat names of the leaves (`--lr` is `optimizer.lr`), unique over a whole tree.
"""

from __future__ import annotations

import dataclasses
import functools
import math
import os
import types
import typing
from typing import Any, ClassVar

REPO_ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
DEFAULT_MODEL = os.path.join(REPO_ROOT, "checkpoints", "tiny-gpt2-wordnet")

# Names the settings accept; tests check them against the registries they stand for
# (prompts.METHODS, prompts.init.INITIALIZERS), which this module does not import.
METHOD_NAMES = ("soft", "ptuning", "prefix", "relaxed", "pez", "adaption")
INIT_NAMES = ("vocab_normal", "uniform", "sampled_vocab", "text")


class SettingError(ValueError):
    """A setting outside its allowed values (one line, naming the setting and what it allows)."""


def one_line(e: BaseException, limit: int | None = None) -> str:
    """An error from a library (Orbax, datasets, safetensors, ...) as part of a one-line message:
    its type and its text with whitespace collapsed, cut at `limit` characters."""
    text = " ".join(str(e).split())
    if limit is not None and len(text) > limit:
        text = text[:limit] + "..."
    return f"{type(e).__name__}: {text}"


# ---- declaring a setting -----------------------------------------------------------------------

@dataclasses.dataclass(frozen=True)
class Range:
    """Allowed numbers: `low`/`high` bounds (None: unbounded), each inclusive unless `*_open`."""

    low: float | None = None
    high: float | None = None
    low_open: bool = False
    high_open: bool = False

    def __contains__(self, x) -> bool:
        if not math.isfinite(x):
            return False
        if self.low is not None and (x < self.low or (self.low_open and x == self.low)):
            return False
        return not (self.high is not None and (x > self.high or (self.high_open and x == self.high)))

    def describe(self) -> str:
        if self.low is not None and self.high is not None:
            return f"in {'(' if self.low_open else '['}{_num(self.low)}, {_num(self.high)}{')' if self.high_open else ']'}"
        if self.low is not None:
            return f"{'>' if self.low_open else '>='} {_num(self.low)}"
        if self.high is not None:
            return f"{'<' if self.high_open else '<='} {_num(self.high)}"
        return "finite"


def _num(x: float) -> str:
    return str(int(x)) if float(x).is_integer() else str(x)


AT_LEAST_1 = Range(1)
AT_LEAST_0 = Range(0)
POSITIVE = Range(0, low_open=True)


def setting(default=dataclasses.MISSING, help: str = "", *, range: Range | None = None, choices=None,
            flag: str | None = None, aliases: tuple[str, ...] = (), default_factory=dataclasses.MISSING,
            repeat: bool = False, shown_default: str | None = None):
    """A dataclass field with its help text and allowed values.

    `flag`: the CLI name (default: the field name, `_` as `-`); `aliases`: other names of the
    flag; `repeat`: a list flag given once per item (`--text a --text b`) instead of
    comma-separated; `shown_default`: the default as --help states it, where the value itself
    would mislead (a path resolved at run time).
    """
    metadata = {"help": help, "range": range, "choices": tuple(choices) if choices else None, "flag": flag,
                "aliases": aliases, "repeat": repeat, "shown_default": shown_default}
    if default_factory is not dataclasses.MISSING:
        return dataclasses.field(default_factory=default_factory, metadata=metadata)
    return dataclasses.field(default=default, metadata=metadata)


def is_settings(cls_or_obj) -> bool:
    return dataclasses.is_dataclass(cls_or_obj) and hasattr(cls_or_obj, "LABEL")


# ---- types ----------------------------------------------------------------------------------------

def _optional(hint) -> tuple[bool, Any]:
    """(whether None is allowed, the hint without None)."""
    if isinstance(hint, types.UnionType) or typing.get_origin(hint) is typing.Union:
        args = [a for a in typing.get_args(hint) if a is not type(None)]
        return len(args) < len(typing.get_args(hint)), args[0] if len(args) == 1 else typing.Union[tuple(args)]
    return False, hint


def _describe_type(hint) -> str:
    optional, hint = _optional(hint)
    origin = typing.get_origin(hint)
    if origin is tuple:
        args = typing.get_args(hint)
        if args == (tuple[str, float], ...):
            text = "a list of part=rate"
        elif len(args) == 2 and args[1] is Ellipsis:
            text = f"a list of {_describe_type(args[0]).split(' ', 1)[1]}s"
        else:
            text = f"{len(args)} {_describe_type(args[0]).split(' ', 1)[1]}s"
    else:
        text = {int: "an integer", float: "a number", str: "a string", bool: "true or false"}.get(hint, str(hint))
    return text + (" or none" if optional else "")


def _has_type(value, hint) -> bool:
    optional, hint = _optional(hint)
    if value is None:
        return optional
    origin = typing.get_origin(hint)
    if origin is tuple:
        args = typing.get_args(hint)
        if not isinstance(value, tuple):
            return False
        if len(args) == 2 and args[1] is Ellipsis:
            return all(_has_type(v, args[0]) for v in value)
        return len(value) == len(args) and all(_has_type(v, a) for v, a in zip(value, args))
    if hint is float:
        return isinstance(value, (int, float)) and not isinstance(value, bool)
    if hint is int:
        return isinstance(value, int) and not isinstance(value, bool)
    return isinstance(value, hint)


def _numbers(value) -> list:
    if isinstance(value, tuple):
        return [x for v in value for x in _numbers(v)]
    return [value] if isinstance(value, (int, float)) and not isinstance(value, bool) else []


def _strings(value) -> list:
    if isinstance(value, tuple):
        return [x for v in value for x in _strings(v)]
    return [value] if isinstance(value, str) else []


@functools.cache
def hints(cls) -> dict[str, Any]:
    return typing.get_type_hints(cls)


# ---- validation ------------------------------------------------------------------------------------

def label(cls, f: dataclasses.Field) -> str:
    """How messages name a setting: its flag (`--lr`), or its key in a file (`task key 'data'`)."""
    return cls.LABEL.format(flag=f.metadata.get("flag") or f.name.replace("_", "-"), name=f.name)


def allowed(hint, meta) -> str:
    """What a setting accepts, in words: 'an integer >= 1', 'one of soft, ptuning, ...'."""
    optional, inner = _optional(hint)
    if meta.get("choices"):
        text = "one of " + ", ".join(meta["choices"])
    else:
        text = _describe_type(inner)
        if meta.get("range") is not None:
            text += " " + ("each " if typing.get_origin(inner) is tuple else "") + meta["range"].describe()
        elif inner is float:
            text += ", finite"
    return text + (" (or none)" if optional else "")


def validate(obj) -> None:
    """Checks every setting of `obj` (a settings dataclass) against its type and allowed values,
    then the rules between settings (`obj.check()`). Raises `SettingError` naming the first bad one."""
    cls = type(obj)
    for f in dataclasses.fields(obj):
        value, hint = getattr(obj, f.name), hints(cls)[f.name]
        if is_settings(value):
            continue  # validated on its own construction
        meta = f.metadata
        bad = not _has_type(value, hint)
        if not bad and meta.get("choices"):
            bad = any(s not in meta["choices"] for s in _strings(value))
        if not bad:
            rng = meta.get("range") or (Range() if _optional(hint)[1] in (float,) or _numbers(value) else None)
            bad = rng is not None and any(x not in rng for x in _numbers(value))
        if bad:
            raise SettingError(f"{label(cls, f)} {_show(value)}: must be {allowed(hint, meta)}")
    check = getattr(obj, "check", None)
    if check is not None:
        check()


def _show(value, top: bool = True) -> str:
    """A value as it is written on the command line (`encoder=0.001,inputs=0.3`, `a,b`, `'soft'`)."""
    if isinstance(value, tuple):
        if not value:
            return "(empty)"
        if all(isinstance(v, tuple) and len(v) == 2 and isinstance(v[0], str) for v in value):
            return ",".join(f"{k}={_show(v, False)}" for k, v in value)
        return ",".join(_show(v, False) for v in value)
    return repr(value) if isinstance(value, str) and top else str(value)


class Settings:
    """Base of the settings dataclasses: validated on construction, flat-name updates."""

    LABEL: ClassVar[str] = "--{flag}"

    def __post_init__(self):
        validate(self)

    @classmethod
    def from_flags(cls, **values):
        """An instance from flat setting names (`lr=0.3, steps=100`), defaults elsewhere."""
        return build(cls, values)

    def replace(self, **values):
        """A copy with settings changed by flat name (`config.replace(lr=0.3, model=...)`)."""
        return build(type(self), values, base=self)

    def check(self) -> None:
        """Rules between settings (overridden where there are some)."""


# ---- the tree of settings --------------------------------------------------------------------------

def leaves(cls) -> list[tuple[tuple[str, ...], str, dataclasses.Field, Any, type]]:
    """(path, flat name, field, type hint, owning class) of every leaf setting under `cls`."""
    out = []
    for f in dataclasses.fields(cls):
        hint = hints(cls)[f.name]
        if isinstance(hint, type) and is_settings(hint):
            out += [((f.name, *path), flat, g, h, owner) for path, flat, g, h, owner in leaves(hint)]
        else:
            out.append(((f.name,), (f.metadata.get("flag") or f.name).replace("-", "_"), f, hint, cls))
    flats = [flat for _, flat, *_ in out]
    dup = {n for n in flats if flats.count(n) > 1}
    if dup:
        raise AssertionError(f"{cls.__name__}: settings {sorted(dup)} share a flat name")
    return out


def get(obj, path: tuple[str, ...]):
    for name in path:
        obj = getattr(obj, name)
    return obj


def build(cls, values: dict[str, Any], base=None):
    """`cls` with the leaves named (flat) in `values` set, the rest from `base` (or defaults)."""
    known = {flat: path for path, flat, *_ in leaves(cls)}
    unknown = sorted(set(values) - set(known))
    if unknown:
        raise SettingError(f"unknown setting {unknown[0]!r}; known: {', '.join(sorted(known))}")
    by_path = {known[flat]: v for flat, v in values.items()}
    return _build(cls, by_path, base)


def _build(cls, by_path: dict, base):
    kwargs = {}
    for f in dataclasses.fields(cls):
        hint = hints(cls)[f.name]
        sub = getattr(base, f.name) if base is not None else None
        if isinstance(hint, type) and is_settings(hint):
            inner = {p[1:]: v for p, v in by_path.items() if p[0] == f.name}
            kwargs[f.name] = _build(hint, inner, sub) if inner or sub is None else sub
        elif (f.name,) in by_path:
            kwargs[f.name] = by_path[(f.name,)]
        elif base is not None:
            kwargs[f.name] = sub
    return cls(**kwargs)


def to_dict(obj) -> dict:
    """Nested plain data (tuples as lists) for JSON."""
    return _plain(dataclasses.asdict(obj))


def _plain(x):
    if isinstance(x, dict):
        return {k: _plain(v) for k, v in x.items()}
    if isinstance(x, (tuple, list)):
        return [_plain(v) for v in x]
    return x


def from_dict(cls, data: dict, where: str = "config"):
    """The inverse of `to_dict`, strict: a missing or unknown key is an error naming it."""
    if not isinstance(data, dict):
        raise SettingError(f"{where} must be a mapping, got {type(data).__name__}")
    names = [f.name for f in dataclasses.fields(cls)]
    missing = [n for n in names if n not in data]
    extra = sorted(set(data) - set(names))
    if missing:
        raise SettingError(f"{where} lacks the setting {missing[0]!r}")
    if extra:
        raise SettingError(f"{where} has an unknown setting {extra[0]!r}")
    kwargs = {}
    for n in names:
        hint = hints(cls)[n]
        kwargs[n] = (from_dict(hint, data[n], f"{where}.{n}") if isinstance(hint, type) and is_settings(hint)
                     else _tuples(data[n]))
    return cls(**kwargs)


def _tuples(x):
    return tuple(_tuples(v) for v in x) if isinstance(x, list) else x


# ---- parsing a flag's text ---------------------------------------------------------------------------

def parse_text(text: str, hint) -> Any:
    """A flag's text as a value of `hint` (`none` for an optional setting's None). Range checks
    are `validate`'s; this only reads the text."""
    optional, hint = _optional(hint)
    if optional and text.strip().lower() == "none":
        return None
    origin = typing.get_origin(hint)
    if origin is tuple:
        args = typing.get_args(hint)
        items = [s.strip() for s in text.split(",") if s.strip()]
        if args == (tuple[str, float], ...):
            pairs = []
            for item in items:
                name, sep, rate = item.partition("=")
                if not sep:
                    raise ValueError(f"expected part=rate, got {item!r}")
                pairs.append((name.strip(), float(rate)))
            return tuple(pairs)
        element = args[0]
        return tuple(parse_text(s, element) for s in items)
    if hint is int:
        return int(text)
    if hint is float:
        return float(text)
    return text


# ---- the settings ---------------------------------------------------------------------------------

@dataclasses.dataclass(frozen=True)
class MethodConfig(Settings):
    """The prompt method (prompts/) and its shape."""

    name: str = setting("soft", "prompt method", choices=METHOD_NAMES, flag="method")
    prompt_length: int = setting(20, "virtual tokens per {prompt} slot (for prefix: keys/values per layer)",
                                 range=AT_LEAST_1)
    init: str = setting("vocab_normal", "how the prompt starts", choices=INIT_NAMES)
    init_text: str | None = setting(None, "text whose embeddings start the prompt (--init text); "
                                          "default: the task's written prompt")
    encoder: str = setting("mlp", "p-tuning encoder", choices=("mlp", "lstm"))
    encoder_hidden: int = setting(128, "p-tuning encoder width", range=AT_LEAST_1)
    prefix_top_layers: int | None = setting(None, "prefix tuning: only the top N layers get a prefix "
                                                  "(default: all)", range=AT_LEAST_1)
    prefix_reparam: int | None = setting(None, "prefix tuning: width of the MLP reparameterisation "
                                               "(default: none, keys/values learned directly)", range=AT_LEAST_1)
    tau_end: float = setting(0.05, "relaxed prompts: final softmax temperature (annealed from 1 over the run)",
                             range=Range(0, 1, low_open=True))
    adapter_layers: int | None = setting(None, "adaption prompts (LLaMA-Adapter): the top N layers get "
                                               "--prompt-length gated prompts each (default: all layers)",
                                         range=AT_LEAST_1)

    def check(self) -> None:
        if self.init_text is not None and self.init != "text":
            raise SettingError(f"--init-text needs --init text (got --init {self.init})")
        for name, method in (("prefix_top_layers", "prefix"), ("prefix_reparam", "prefix"),
                             ("adapter_layers", "adaption")):
            if getattr(self, name) is not None and self.name != method:
                raise SettingError(f"--{name.replace('_', '-')} applies to --method {method} only "
                                   f"(got --method {self.name})")


@dataclasses.dataclass(frozen=True)
class OptimizerConfig(Settings):
    """Optax optimizer over the prompt's parts (optim.py). Its schedule's length is the run's."""

    lr: float = setting(0.1, "learning rate (soft prompts like large rates: Lester et al. used 0.3)",
                        range=AT_LEAST_0)
    name: str = setting("adamw", "optimizer", choices=("adamw", "adam", "sgd", "adafactor"), flag="optimizer")
    schedule: str = setting("constant", "learning-rate schedule", choices=("constant", "cosine", "linear"))
    warmup_steps: int = setting(0, "linear warm-up steps from 0 to --lr", range=AT_LEAST_0)
    weight_decay: float = setting(0.0, "decoupled weight decay (adamw)", range=AT_LEAST_0)
    clip_norm: float | None = setting(1.0, "clip the gradient's global norm to this (none: no clipping)",
                                      range=POSITIVE)
    part_lr: tuple[tuple[str, float], ...] = setting(
        (), "learning rates of prompt parts, e.g. encoder=1e-3,inputs=0.3 (parts: embeddings, inputs, encoder, "
            "kv, mlp, logits)", range=AT_LEAST_0)
    frozen_parts: tuple[str, ...] = setting((), "prompt parts that do not train, e.g. inputs")


@dataclasses.dataclass(frozen=True)
class LoopConfig(Settings):
    """The training loop (loop.py)."""

    steps: int | None = setting(None, "training steps (default: --epochs over the training set)", range=AT_LEAST_1)
    epochs: float = setting(3.0, "passes over the training set when --steps is not given", range=POSITIVE)
    eval_every: int = setting(100, "validate (and checkpoint) every N steps", range=AT_LEAST_1)
    patience: int | None = setting(None, "early stopping: stop after N validations without a new best "
                                         "(default: never)", range=AT_LEAST_1)
    keep: int = setting(3, "last checkpoints kept (the best is kept as well)", range=AT_LEAST_1)
    log_every: int = setting(10, "record the training loss every N steps", range=AT_LEAST_1)

    def total_steps(self, n_examples: int, batch_size: int) -> int:
        if self.steps is not None:
            return self.steps
        return max(1, math.ceil(self.epochs * n_examples / batch_size))


@dataclasses.dataclass(frozen=True)
class DataConfig(Settings):
    """Batches (data.py)."""

    batch_size: int = setting(32, "examples per training step", range=AT_LEAST_1)
    accumulate: int = setting(1, "split each batch into N micro-batches computed one after another: the same "
                                 "gradient with less activation memory", range=AT_LEAST_1)
    train_examples: int | None = setting(None, "train on the first N training examples only (default: all)",
                                         range=AT_LEAST_1)
    eval_examples: int | None = setting(None, "validate and test on at most N examples (default: all)",
                                        range=AT_LEAST_1)

    def check(self) -> None:
        if self.batch_size % self.accumulate:
            raise SettingError(f"--batch-size {self.batch_size} is not divisible by --accumulate {self.accumulate}")


@dataclasses.dataclass(frozen=True)
class TrainConfig(Settings):
    """What a run is: everything that determines its numbers (stored in run.json)."""

    tasks: tuple[str, ...] = setting(("antonyms",), "built-in task (see `jaxprompt tasks`) or task file "
                                                    "(.toml/.yaml/.json); several, comma-separated, train one "
                                                    "prompt per task in shared batches", flag="task",
                                     aliases=("tasks",))
    model: str = setting(DEFAULT_MODEL, "HF model id (gpt2, facebook/opt-1.3b, ...) or checkpoint directory",
                         shown_default="the embedded checkpoints/tiny-gpt2-wordnet")
    dtype: str = setting("float32", "compute dtype of the frozen weights (the prompt stays float32)",
                         choices=("float32", "bfloat16", "float16"))
    seed: int = setting(0, "seed of the batch order and prompt initialisation (and of the data split, unless "
                           "--split-seed)", range=AT_LEAST_0)
    split_seed: int | None = setting(None, "seed of the train/validation/test split", shown_default="--seed",
                                     range=AT_LEAST_0)
    seeds: int = setting(1, "train N prompts at once, seeds --seed .. --seed + N - 1, in one compiled step "
                            "(jax.vmap); they share the data split and every metric is reported as mean ± std",
                         range=AT_LEAST_1)
    baseline: bool = setting(True, "also evaluate the written prompt")
    remat: bool = setting(False, "recompute each layer in the backward pass (less memory, more time)")
    shared_prefix: bool = setting(True, "compute the head every example shares once per batch")
    loss: str = setting("lm", "lm: the target's negative log-likelihood; choices (choice tasks): cross-entropy "
                              "over the candidates' log-likelihoods, the gold one ranked first", choices=("lm", "choices"))
    method: MethodConfig = dataclasses.field(default_factory=MethodConfig)
    optimizer: OptimizerConfig = dataclasses.field(default_factory=OptimizerConfig)
    loop: LoopConfig = dataclasses.field(default_factory=LoopConfig)
    data: DataConfig = dataclasses.field(default_factory=DataConfig)

    @property
    def data_seed(self) -> int:
        """The seed of the data split: a population's members share it (their own seeds differ)."""
        return self.seed if self.split_seed is None else self.split_seed

    def check(self) -> None:
        if not self.tasks:
            raise SettingError("--task: give at least one task")
        if len(set(self.tasks)) < len(self.tasks):
            raise SettingError(f"--task {','.join(self.tasks)}: a task is named twice")


def parse_mesh(spec: str) -> dict[str, int]:
    """`"data=2,model=4"` -> {"data": 2, "model": 4}; an axis left out has size 1."""
    sizes = {"data": 1, "model": 1}
    parts = [p.strip() for p in spec.split(",") if p.strip()]
    names = [p.partition("=")[0].strip() for p in parts]
    for part in parts:
        name, _, value = (x.strip() for x in part.partition("="))
        if name not in sizes or not value.isdigit() or int(value) < 1 or names.count(name) > 1:
            raise ValueError(f"mesh {spec!r} is not data=A,model=B with positive integers (e.g. data=2,model=4)")
        sizes[name] = int(value)
    if not parts:
        raise ValueError(f"mesh {spec!r} is not data=A,model=B with positive integers (e.g. data=2,model=4)")
    return sizes


def check_mesh(spec: str | None, flag: str = "--mesh") -> None:
    if spec is not None:
        try:
            parse_mesh(spec)
        except ValueError as e:
            raise SettingError(f"{flag}: {e}") from None


@dataclasses.dataclass(frozen=True)
class RunOptions(Settings):
    """How this invocation runs a training (not part of the run: never stored, never compared).

    Devices and processes change how a step is computed, not what it computes: a run may be
    resumed on another mesh or another number of processes."""

    out: str | None = setting(None, "run directory", shown_default="checkpoints/<task>-<method>-<time>")
    resume: bool = setting(False, "continue the run in --out from its last checkpoint, with its stored settings")
    overwrite: bool = setting(False, "replace the run in --out as a whole")
    devices: int | None = setting(None, "devices of each process that take part (default: all)", range=AT_LEAST_1)
    mesh: str | None = setting(None, "shard the frozen weights over a device mesh data=A,model=B: the batch split "
                                     "A ways, each weight matrix B ways (A x B = every device of every process)",
                               shown_default="data parallel (pmap), the whole model on every device")
    coordinator: str | None = setting(None, "multi-process run: HOST:PORT of process 0, with --num-processes and "
                                            "--process-id",
                                      shown_default="one process, or the processes of a cluster JAX detects: TPU "
                                                    "pod slice, SLURM, Open MPI")
    num_processes: int | None = setting(None, "multi-process run: how many processes take part", range=AT_LEAST_1)
    process_id: int | None = setting(None, "multi-process run: this process's index, 0 to --num-processes - 1",
                                     range=AT_LEAST_0)
    progress: bool = setting(True, "show a progress bar")
    cache: bool = setting(True, "keep prompt representations on disk ($JAXPROMPT_CACHE, default "
                                "~/.cache/jaxprompt/prompt-cache) for evaluation")

    def check(self) -> None:
        if self.resume and self.overwrite:
            raise SettingError("--resume and --overwrite exclude each other: continue the run or replace it")
        check_mesh(self.mesh)
        given = [self.coordinator is not None, self.num_processes is not None, self.process_id is not None]
        if any(given) and not all(given):
            raise SettingError("a multi-process run needs all of --coordinator HOST:PORT, --num-processes N and "
                               "--process-id I (or none of them, inside a cluster JAX detects)")
        if all(given):
            host, _, port = self.coordinator.rpartition(":")
            if not host or not port.isdigit() or not 0 < int(port) < 65536:
                raise SettingError(f"--coordinator {self.coordinator!r}: must be HOST:PORT (e.g. 10.0.0.1:1234)")
            if self.process_id >= self.num_processes:
                raise SettingError(f"--process-id {self.process_id}: must be in 0..{self.num_processes - 1} for "
                                   f"--num-processes {self.num_processes}")


@dataclasses.dataclass(frozen=True)
class LoadOptions(Settings):
    """Which trained prompt of a run, on which weights (eval | generate | inspect | export)."""

    which: str = setting("best", "checkpoint", choices=("best", "last"))
    member: int | None = setting(None, "a population's (train --seeds K) member whose prompt to use, 0..K-1",
                                 shown_default="every member for eval; generate, inspect and export need one",
                                 range=AT_LEAST_0)
    model: str | None = setting(None, "load the frozen model from here instead of the run's")
    cache: bool = setting(True, "keep prompt representations on disk ($JAXPROMPT_CACHE)")


@dataclasses.dataclass(frozen=True)
class EvalOptions(Settings):
    split: str = setting("test", "split to evaluate", choices=("train", "validation", "test"))
    examples: int | None = setting(None, "evaluate the first N examples (default: all)", range=AT_LEAST_1)
    baseline: bool = setting(True, "also evaluate the written prompt")
    json: str | None = setting(None, "also write the metrics to this file")


@dataclasses.dataclass(frozen=True)
class GenerateOptions(Settings):
    text: tuple[str, ...] = setting((), "an input: a value, 'field=value;...' or JSON (repeatable; default: "
                                        "lines on stdin)", repeat=True)
    max_new_tokens: int | None = setting(None, "tokens to generate (default: the task's)", range=AT_LEAST_1)
    temperature: float = setting(0.0, "sampling temperature (0: greedy)", range=AT_LEAST_0)
    top_k: int = setting(0, "sample among the k most likely tokens (0: all)", range=AT_LEAST_0)
    top_p: float = setting(1.0, "sample from the smallest set of tokens with this much probability",
                           range=Range(0, 1, low_open=True))
    seed: int = setting(0, "sampling seed", range=AT_LEAST_0)
    task: str | None = setting(None, "multi-task runs: the task whose prompt to use")


@dataclasses.dataclass(frozen=True)
class InspectOptions(Settings):
    top: int = setting(5, "nearest vocabulary tokens shown per prompt vector", range=AT_LEAST_1)
    plot: str | None = setting(None, "write a PCA plot of vocabulary and prompt vectors (PNG) here")
    evaluate: int = setting(0, "evaluate the prompt projected to its nearest tokens on N test examples "
                               "(0: no)", range=AT_LEAST_0)


@dataclasses.dataclass(frozen=True)
class ExportOptions(Settings):
    to: str = setting("peft", "a PEFT adapter, or plain tensors with a JSON description of where they go",
                      choices=("peft", "plain"))


@dataclasses.dataclass(frozen=True)
class ImportOptions(Settings):
    source: str = setting("peft", "adapter format", choices=("peft",), flag="from")
    task: str = setting("antonyms", "the task the prompt is for: built-in name or task file")
    model: str | None = setting(None, "the base model (default: the adapter's base_model_name_or_path)")
    overwrite: bool = setting(False, "replace an existing run in OUT_DIR as a whole")


@dataclasses.dataclass(frozen=True)
class SweepOptions(Settings):
    lengths: tuple[int, ...] = setting((1, 5, 10, 20), "prompt lengths to try, comma-separated", range=AT_LEAST_1)
    trials: int = setting(4, "Optuna trials", range=AT_LEAST_1)
    lrs: tuple[float, ...] = setting((), "learning rates to try, comma-separated", shown_default="--lr",
                                     range=AT_LEAST_0)
    inits: tuple[str, ...] = setting((), "prompt initialisations to try, comma-separated", shown_default="--init",
                                     choices=INIT_NAMES)
    trial_seeds: tuple[int, ...] = setting((), "seeds to try, comma-separated (all trials share --seed's data "
                                               "split)", shown_default="--seed", range=AT_LEAST_0)
    population: int = setting(1, "train up to N trials of one prompt length at once, as one population (one "
                                 "compiled step; each its own rate, initialisation and seed)", range=AT_LEAST_1)
    sweep_dir: str | None = setting(None, "directory of the trial runs (default: a new temporary directory)")

    def check(self) -> None:
        if not self.lengths:
            raise SettingError("--lengths: give at least one prompt length")


@dataclasses.dataclass(frozen=True)
class PlanOptions(Settings):
    """`jaxprompt plan`: per-device memory of a training step, before the run (plan.py). The model,
    dtype, batch size, prompt length, micro-batches and remat are the training settings' own flags."""

    devices: int = setting(1, "devices to plan for (the step is compiled for as many virtual CPU devices: they "
                              "need not exist here)", range=Range(1, 1024))
    mesh: str | None = setting(None, "the mesh data=A,model=B to plan (A x B = --devices)",
                               shown_default="every mesh whose data axis divides the batch")
    device_memory: str | None = setting(None, "memory of one device, e.g. 80GB or 16GiB: whether the step fits, and "
                                              "the smallest model axis that does")
    text_tokens: int = setting(64, "tokens of text per example beside the prompt", range=AT_LEAST_1)

    def check(self) -> None:
        check_mesh(self.mesh)
        if self.mesh is not None:
            sizes = parse_mesh(self.mesh)
            if sizes["data"] * sizes["model"] != self.devices:
                raise SettingError(f"--mesh {self.mesh} has {sizes['data'] * sizes['model']} devices; --devices is "
                                   f"{self.devices}")
        if self.device_memory is not None:
            from jaxprompt.plan import parse_bytes  # no JAX: plan.py imports it where it compiles

            try:
                parse_bytes(self.device_memory)
            except ValueError as e:
                raise SettingError(f"--device-memory: {e}") from None
