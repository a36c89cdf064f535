"""What a run is, and how one invocation runs it: the settings of `jaxprompt train`.

What a run *is* (`TrainConfig`, stored in run.json):

    TrainConfig   tasks, model, dtype, quantize, seed, split_seed, seeds, baseline, remat, shared_prefix
      method      MethodConfig      the prompt method and its settings (prompts/settings.py)
      optimizer   OptimizerConfig   Optax optimizer, schedule, clipping, per-part rates
      loop        LoopConfig        steps / epochs, validation, early stopping, checkpoints
      data        DataConfig        batch size, micro-batches, example caps

How one invocation runs it (`RunOptions`: output directory, resume, devices, mesh, ...) is not
stored. The machinery (declaring, checking, parsing and storing a setting) is settings.py's, and
each command's own options sit beside the command (jaxprompt/cli/).
"""

from __future__ import annotations

import dataclasses
import math
from typing import NamedTuple

from jaxprompt.paths import DEFAULT_MODEL
from jaxprompt.prompts.settings import method_config_class
from jaxprompt.settings import AT_LEAST_0, AT_LEAST_1, POSITIVE, Range, SettingError, Settings, setting

# the prompt method and every method's settings, generated from the methods' own declarations
MethodConfig = method_config_class()

# `--quantize`: the frozen matmul weights as they are (in --dtype), in 8 bits or in 4 (models/quantize.py's
# SCHEMES; docs/quantization.md); the commands that load a run's model add "run": as the run trained
QUANTIZE = ("none", "int8", "int4")
QUANTIZE_HELP = "hold the frozen model's matmul weights in 8 or 4 bits, dequantized where each layer runs"


@dataclasses.dataclass(frozen=True)
class OptimizerConfig(Settings):
    """Optax optimizer over the prompt's parts (training/optim.py). Its schedule's length is the run's."""

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
    """The training loop (training/loop.py)."""

    steps: int | None = setting(None, "training steps", range=AT_LEAST_1, shown_default="--epochs over the training set")
    epochs: float = setting(3.0, "passes over the training set when --steps is not given", range=POSITIVE)
    eval_every: int = setting(100, "validate (and checkpoint) every N steps", range=AT_LEAST_1)
    patience: int | None = setting(None, "early stopping: stop after N validations without a new best",
                                   range=AT_LEAST_1, shown_default="never")
    keep: int = setting(3, "last checkpoints kept (the best is kept as well)", range=AT_LEAST_1)
    log_every: int = setting(10, "record the training loss every N steps", range=AT_LEAST_1)

    def total_steps(self, n_examples: int, batch_size: int) -> int:
        if self.steps is not None:
            return self.steps
        return max(1, math.ceil(self.epochs * n_examples / batch_size))


@dataclasses.dataclass(frozen=True)
class DataConfig(Settings):
    """Batches (data/batches.py)."""

    batch_size: int = setting(32, "examples per training step", range=AT_LEAST_1)
    accumulate: int = setting(1, "split each batch into N micro-batches computed one after another: the same "
                                 "gradient with less activation memory", range=AT_LEAST_1)
    train_examples: int | None = setting(None, "train on the first N training examples only",
                                         range=AT_LEAST_1, shown_default="all")
    eval_examples: int | None = setting(None, "validate and test on at most N examples",
                                        range=AT_LEAST_1, shown_default="all")

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
    quantize: str = setting("none", QUANTIZE_HELP + " (a prompt trained so runs on the unquantized model too)",
                            choices=QUANTIZE)
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


@dataclasses.dataclass(frozen=True)
class Member:
    """What one member of a population (`--seeds K`, sweeps) varies; everything else is the run's.
    Stored in run.json."""

    seed: int
    lr: float
    init: str


class MeshSpec(NamedTuple):
    """A device mesh as `--mesh` gives it: `data=A,model=B` or `data=A,fsdp=B` (parallel/strategies.py)."""

    data: int
    model: int  # the second axis: each frozen weight matrix stored split this many ways
    fsdp: bool  # named `fsdp`: layers gathered where they run, the batch split over every device

    @property
    def devices(self) -> int:
        return self.data * self.model

    @property
    def batch_split(self) -> int:
        """How many ways the batch is split."""
        return self.devices if self.fsdp else self.data

    @property
    def split_text(self) -> str:
        """What splits the batch, for messages: "the data axis (2)", "the devices (8)"."""
        return f"the {'devices' if self.fsdp else 'data axis'} ({self.batch_split})"

    def __str__(self) -> str:
        return f"data={self.data},{'fsdp' if self.fsdp else 'model'}={self.model}"


def parse_mesh(spec: str) -> MeshSpec:
    """`"data=2,model=4"` -> MeshSpec(2, 4, fsdp=False), `"fsdp=8"` -> MeshSpec(1, 8, fsdp=True); an
    axis left out has size 1."""
    bad = ValueError(f"mesh {spec!r} is not data=A,model=B or data=A,fsdp=B with positive integers "
                     "(e.g. data=2,model=4)")
    sizes = {}
    for part in [p.strip() for p in spec.split(",") if p.strip()]:
        name, _, value = (x.strip() for x in part.partition("="))
        if name not in ("data", "model", "fsdp") or not value.isdigit() or int(value) < 1 or name in sizes:
            raise bad
        sizes[name] = int(value)
    if not sizes or ("model" in sizes and "fsdp" in sizes):
        raise bad
    return MeshSpec(sizes.get("data", 1), sizes.get("model", sizes.get("fsdp", 1)), "fsdp" in sizes)


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
    devices: int | None = setting(None, "devices of each process that take part", range=AT_LEAST_1,
                                 shown_default="all")
    mesh: str | None = setting(None, "shard the frozen weights over a device mesh data=A,model=B (the batch split A "
                                     "ways, each weight matrix B ways, computed with where it lies) or data=A,fsdp=B "
                                     "(each layer's weights gathered where it runs, the batch split A x B ways); A x "
                                     "B = every device of every process",
                               shown_default="data parallel (pmap), the whole model on every device")
    coordinator: str | None = setting(None, "multi-process run: HOST:PORT of process 0, with --num-processes and "
                                            "--process-id",
                                      shown_default="one process, or the processes of a cluster JAX detects: TPU "
                                                    "pod slice, SLURM, Open MPI")
    num_processes: int | None = setting(None, "multi-process run: how many processes take part", range=AT_LEAST_1)
    process_id: int | None = setting(None, "multi-process run: this process's index, 0 to --num-processes - 1",
                                     range=AT_LEAST_0)
    heartbeat_timeout: int = setting(60, "multi-process run: seconds without word from a process before it counts as "
                                         "lost; the others stop after half of it, in one line, with exit code 75 "
                                         "(docs/fault-tolerance.md)", range=Range(2))
    progress: bool = setting(True, "show a progress bar")
    cache: bool = setting(True, "keep prompt representations ($JAXPROMPT_CACHE, default "
                                "~/.cache/jaxprompt/prompt-cache) and compiled programs (~/.cache/jaxprompt/xla) "
                                "on disk")
    log: tuple[str, ...] = setting((), "also log the metrics to these trackers, comma-separated (metrics.jsonl is "
                                       "always written; needs pip install 'jaxprompt[track]')", shown_default="none",
                                   choices=("tensorboard", "wandb"))
    wandb_project: str = setting("jaxprompt", "--log wandb: the Weights & Biases project")
    run_name: str | None = setting(None, "--log: the run's name in the trackers",
                                   shown_default="the run directory's name")

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
