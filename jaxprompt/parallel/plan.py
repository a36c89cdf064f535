"""A memory plan before a run: per-device bytes of one prompt-tuning step on a device mesh, from
shapes alone (no weights allocated).

The train step is lowered and compiled on abstract arrays laid out as `MeshParallel` lays them out
(frozen weights FSDP-sharded along `model`, the batch along `data`); frozen, prompt and optimizer
bytes follow from the shardings exactly, temporaries from XLA's buffer assignment
(`compiled.memory_analysis()`). Compiling for N devices needs N devices: on a machine with fewer,
the plan runs in a subprocess with N virtual CPU devices.

On a machine with the accelerator (as many devices as the mesh), the step is compiled for it and
its temporaries are that compiler's (fused attention included). Elsewhere they are those of XLA's
CPU compiler: for bfloat16 it converts weights to float32 around every matmul, which a GPU or TPU
does not, so a bf16 plan compiles the step in float32 and reports those temporaries as an upper
bound (activations and gathered weights are at most twice their bf16 size), and the bytes its
collectives send likewise.

`--target cpu` plans a run on this machine's CPU instead (one device): the step compiled exactly as
such a run compiles it (bf16 weights held as raw bits, layers rematerialised, no proxy), and the
host memory a process needs beside it, measured: this process's resident memory after compiling
the step (Python, JAX, jaxprompt, XLA's compiler and the program).

Two layouts of a mesh are planned: `data=A,model=B`, where XLA's partitioner computes with the
weight shards where they lie, and `data=A,fsdp=B`, each layer gathered where it runs
(`parallel.MeshParallel`); `sent/step` says which moves less for this step.
"""

from __future__ import annotations

import dataclasses
import json
import math
import os
import re
import subprocess
import sys

from jaxprompt.config import MeshSpec
from jaxprompt.parallel.collectives import collective_bytes

UNITS = {"": 1, "B": 1, "KB": 1e3, "MB": 1e6, "GB": 1e9, "TB": 1e12, "KIB": 2**10, "MIB": 2**20, "GIB": 2**30,
         "TIB": 2**40}


MEASURED_VS_ESTIMATED = ("exact from shapes and shardings: frozen, prompt + optimizer, batch; measured by XLA's "
                         "buffer assignment of the compiled step: temporaries (on this machine's CPU compiler); "
                         "estimated: nothing else (host memory, the loader and the runtime are not counted)")
MEASURED_ON_CPU = ("exact from shapes: frozen, prompt + optimizer, batch; measured: the temporaries of the step as "
                   "this CPU runs it (XLA's buffer assignment; bf16 weights held as bits, layers rematerialised, as "
                   "a run here holds them), and the host: this process's resident memory after compiling it "
                   "(Python, JAX, jaxprompt, XLA's compiler and the program); not counted: the loader's "
                   "transient buffers, other programs a run compiles (evaluation, generation)")
TARGETS = ("accelerator", "cpu")


def parse_bytes(text: str) -> int:
    """`80GB`, `16GiB`, `512MB`, or a plain number of bytes."""
    number = text.strip().upper().rstrip("S")
    unit = next((u for u in sorted(UNITS, key=len, reverse=True) if u and number.endswith(u)), "")
    try:
        value = float(number[:len(number) - len(unit)] if unit else number)
    except ValueError:
        raise ValueError(f"bad memory size {text!r}: use e.g. 80GB, 16GiB or 512MB") from None
    if not value > 0:
        raise ValueError(f"memory size must be positive, got {text!r}")
    return int(value * UNITS[unit])


def human(n: float) -> str:
    for unit in ("B", "KiB", "MiB", "GiB", "TiB"):
        if abs(n) < 1024 or unit == "TiB":
            return f"{n:.0f} {unit}" if unit == "B" else f"{n:.2f} {unit}"
        n /= 1024
    return f"{n:.2f} TiB"


@dataclasses.dataclass
class MemoryPlan:
    model: str
    devices: int
    data: int
    model_axis: int
    batch_size: int
    prompt_length: int
    text_tokens: int
    dtype: str
    frozen_bytes: int  # this device's shards of the frozen weights
    prompt_bytes: int  # prompt + optimizer state (replicated)
    batch_bytes: int  # this device's part of the batch
    temp_bytes: int  # XLA temporaries of the step (activations, gathered weight shards, gradients)
    temp_upper_bound: bool  # temporaries from a float32 proxy compile (bfloat16 plans)
    total_bytes: int
    frozen_total_bytes: int  # all frozen weights, unsharded
    micro_batches: int = 1
    remat: bool | str = False  # a policy of `stack.REMAT` (True: "full")
    method: str = "soft"
    flops: float = 0.0  # this device's FLOPs per step (XLA's cost analysis of the partitioned step)
    collectives: dict = dataclasses.field(default_factory=dict)  # kind -> bytes this device sends per step
    fsdp: bool = False  # the second axis as FSDP (`fsdp=`), not as XLA chooses (`model=`)
    target: str = "accelerator"  # what runs the step: "accelerator" (GPU/TPU) or "cpu" (this machine's)
    host_bytes: int = 0  # "cpu": this process's resident memory after compiling the step (in the total)
    quantize: str = "none"  # the matmul weights in 8 or 4 bits (`--quantize`): frozen bytes are the integers and scales

    @property
    def how(self) -> str:
        return MEASURED_ON_CPU if self.target == "cpu" else MEASURED_VS_ESTIMATED

    @property
    def mesh(self) -> str:
        return str(MeshSpec(self.data, self.model_axis, self.fsdp))

    def fits(self, device_memory: int | None) -> bool | None:
        return None if device_memory is None else self.total_bytes <= device_memory

    def table(self, device_memory: int | None = None) -> str:
        temp = human(self.temp_bytes) + (" (upper bound: float32 proxy compile)" if self.temp_upper_bound else "")
        rows = [
            ("model", f"{self.model} ({self.held}, frozen weights {human(self.frozen_total_bytes)} in all)"),
            ("mesh", f"{self.devices} devices: {self.mesh}"),
            ("step", self.step_text()),
            ("frozen weights / device", human(self.frozen_bytes)),
            ("prompt + optimizer / device", human(self.prompt_bytes)),
            ("batch / device", human(self.batch_bytes)),
            ("temporaries / device", temp),
            *([("host (measured)", human(self.host_bytes))] if self.target == "cpu" else []),
            ("total / device", human(self.total_bytes)),
            ("sent / device / step", self.communication_text() + (" (upper bound: float32 proxy compile)"
                                                                   if self.temp_upper_bound and self.collectives else "")),
            ("how", self.how),
        ]
        if device_memory is not None:
            verdict = "fits" if self.fits(device_memory) else "does NOT fit"
            rows.append(("device memory", f"{human(device_memory)}: {verdict}"))
        width = max(len(k) for k, _ in rows)
        return "\n".join(f"{k:<{width}}  {v}" for k, v in rows)

    @property
    def held(self) -> str:
        """How the frozen weights are held: "bfloat16", "bfloat16, matmul weights int4"."""
        return self.dtype + ("" if self.quantize == "none" else f", matmul weights {self.quantize}")

    def communication_text(self) -> str:
        """Bytes this device sends per step, by collective (counted from the compiled HLO)."""
        if not self.collectives:
            return "none"
        parts = ", ".join(f"{kind} {human(n)}" for kind, n in sorted(self.collectives.items()))
        return f"{human(sum(self.collectives.values()))} ({parts})"

    def step_text(self) -> str:
        extra = (f", {self.micro_batches} micro-batches" if self.micro_batches > 1 else "") + \
            (f", remat {'full' if self.remat is True else self.remat}" if self.remat not in (False, "none") else "")
        return (f"{self.method} prompt, batch {self.batch_size}, prompt length {self.prompt_length}, "
                f"{self.text_tokens} text tokens per example{extra}")


def comparison(plans: list[MemoryPlan], device_memory: int | None = None, memory_label: str | None = None) -> str:
    """One row per mesh of the same step: what each device holds, and whether it fits
    `device_memory` (written as `memory_label`, e.g. "16GB")."""
    first = plans[0]
    header = ["mesh", "frozen", "prompt+opt", "batch", "temporaries", "total", "sent/step", "GFLOP/step"]
    if device_memory is not None:
        header.append(f"fits {memory_label or human(device_memory)}")
    rows = []
    for p in plans:
        row = [p.mesh, human(p.frozen_bytes), human(p.prompt_bytes),
               human(p.batch_bytes), human(p.temp_bytes), human(p.total_bytes),
               human(sum(p.collectives.values())), f"{p.flops / 1e9:.1f}"]
        if device_memory is not None:
            row.append("yes" if p.fits(device_memory) else "no")
        rows.append(row)
    widths = [max(len(r[i]) for r in [header, *rows]) for i in range(len(header))]
    line = lambda cells: "  ".join(c.ljust(w) for c, w in zip(cells, widths)).rstrip()
    notes = [f"{first.model} ({first.held}, frozen weights {human(first.frozen_total_bytes)} in all) on "
             f"{first.devices} device(s); {first.step_text()}; bytes per device (sent/step: what each "
             "device's collectives send per step, counted from the compiled HLO):"]
    host = f"; the total holds the host, {human(first.host_bytes)}" if first.target == "cpu" else ""
    notes.append(first.how + host)
    if first.temp_upper_bound:
        notes.append("temporaries and sent/step are upper bounds (float32 proxy compile, see `jaxprompt.plan`): "
                     "bfloat16 weights and activations move in half the bytes")
    return "\n".join(notes + [line(header), line(["-" * w for w in widths])] + [line(r) for r in rows])


def model_config(name: str):
    """The model's configuration, never its weights: a preset by HF id, else the config.json of a
    local checkpoint directory, or of a HF id in the Hugging Face cache (downloaded alone when not
    cached and the hub can be reached)."""
    from jaxprompt.models import PRESETS, preset
    from jaxprompt.models.loading import load_config, resolve
    from jaxprompt.models.model_config import ConfigError

    if name in PRESETS:
        return preset(name)
    if os.path.exists(name) or name.startswith((".", "/")):
        return load_config(resolve(name))  # resolve names what is missing from a directory
    import logging

    from huggingface_hub import hf_hub_download

    hub_log = logging.getLogger("huggingface_hub")
    level = hub_log.level
    hub_log.setLevel(logging.ERROR)  # its retries, one warning each, would bury the one-line answer
    try:
        path = hf_hub_download(name, "config.json")
    except Exception as e:  # huggingface_hub raises many types (offline, unknown repo, gated, ...)
        raise ConfigError(f"model {name!r} is not a preset, a local checkpoint directory or in the Hugging Face "
                          f"cache, and its config.json could not be downloaded ({type(e).__name__}); presets: "
                          f"{', '.join(PRESETS)}") from None
    finally:
        hub_log.setLevel(level)
    return load_config(os.path.dirname(path))


def _leaf_bytes(x) -> int:
    shard = x.sharding.shard_shape(x.shape) if getattr(x, "sharding", None) is not None else x.shape
    return math.prod(shard) * x.dtype.itemsize


def plan_here(model, devices: int, data: int, model_axis: int, batch_size: int, prompt_length: int,
              text_tokens: int, dtype: str, micro_batches: int = 1, remat: bool | str = False,
              method: str = "soft", fsdp: bool = False, target: str = "accelerator",
              target_tokens: int | None = None, quantize: str = "none") -> MemoryPlan:
    """The plan of one step of `method` (any of prompts.METHODS), compiled in this process (needs
    `devices` devices; `model` a name, as `model_config` reads it, or a `ModelConfig`).
    `target="cpu"`: the step as a run on this CPU compiles it (one device), and this process's own
    resident memory after compiling it. `target_tokens`: predicted tokens per example (default 4, or
    the text if shorter). `quantize`: the layers' matmul weights held as `Session.load(quantize=...)`
    holds them (integers and scales)."""
    import jax
    import jax.numpy as jnp

    from jaxprompt.data.batches import collate
    from jaxprompt.data.templates import Encoded
    from jaxprompt.models import Model
    from jaxprompt.models.quantize import quantized_shapes
    from jaxprompt.parallel.strategies import MeshParallel
    from jaxprompt.precision import as_dtype, converts_layer_by_layer
    from jaxprompt.prompts import METHODS
    from jaxprompt.prompts.loss import prompt_loss
    from jaxprompt.training.optim import OptimizerConfig, make_optimizer
    from jaxprompt.training.step import TrainState

    if target not in TARGETS:
        raise ValueError(f"unknown target {target!r}; use one of {', '.join(TARGETS)}")
    if target == "cpu" and devices != 1:
        raise ValueError(f"target cpu plans this machine's CPU as one device; devices is {devices}")
    config, model = (model_config(model), model) if isinstance(model, str) else (model, model.model_type)
    weights_dtype = as_dtype(dtype)
    held = target == "cpu" and converts_layer_by_layer(weights_dtype)  # as `Session.load` holds them
    net = Model(config, remat=remat or held)
    # see the module docstring: a CPU compiler stands in for an accelerator in float32
    proxy = weights_dtype == jnp.bfloat16 and target != "cpu" and jax.default_backend() == "cpu"
    mp = MeshParallel(data, model_axis, jax.devices()[:devices], n_layers=config.n_layers, fsdp=fsdp)
    if batch_size % (mp.batch_split * micro_batches):
        raise ValueError(f"batch size {batch_size} is not divisible by {mp.spec.split_text} x {micro_batches} "
                         "micro-batches")

    def abstract_frozen(dtype):
        shapes = quantized_shapes(config, net.param_shapes(dtype), quantize)
        shardings = mp.frozen_shardings(shapes)
        return jax.tree.map(lambda s, sh: jax.ShapeDtypeStruct(s.shape, s.dtype, sharding=sh), shapes, shardings)

    frozen = abstract_frozen(weights_dtype)
    if held:  # the layer stack and the vocabulary tables as raw bits, as `Session.load` holds them
        bits = lambda x: jax.ShapeDtypeStruct(x.shape, jnp.uint16, sharding=x.sharding)
        frozen = net.hold_as_bits(frozen, hold=lambda tree: jax.tree.map(
            lambda x: bits(x) if x.dtype == jnp.bfloat16 else x, tree))
    method_name, method = method, METHODS[method](length=prompt_length)  # its shapes: no init pool, no steps
    # embedding prompts take token positions (a shared head before the text); prefix and adaption
    # prompts take none
    virtual = prompt_length if method.takes_positions else 0
    prompt = jax.eval_shape(lambda f: method.init(jax.random.key(0), net, f, prompt_length), frozen)
    optimizer = make_optimizer(OptimizerConfig(), prompt)
    state = jax.eval_shape(lambda p: TrainState.create(p, optimizer, jax.random.PRNGKey(0)), prompt)
    # the shape of a templated batch: the prompt as a shared head, then each example's text
    examples = [Encoded([0] * virtual + [1] * text_tokens, list(range(virtual)) + [-1] * text_tokens,
                        min(4 if target_tokens is None else target_tokens, text_tokens)) for _ in range(batch_size)]
    batch = collate(examples, 0, shared_len=virtual)
    batch = jax.tree.map(lambda x: jax.ShapeDtypeStruct(x.shape, x.dtype, sharding=mp.batch_sharding), batch)

    def compiled(frozen):  # the frozen weights' shardings are those of their shape structs
        step = mp.train_step(prompt_loss(net, method), optimizer, micro_batches)
        return step.lower(state, frozen, batch).compile()

    executable = compiled(abstract_frozen(jnp.float32) if proxy else frozen)
    analysis = executable.memory_analysis()
    cost = executable.cost_analysis()
    cost = cost[0] if isinstance(cost, (list, tuple)) else cost
    collectives = collective_bytes(executable.as_text(), devices) if devices > 1 else {}
    frozen_bytes, prompt_bytes, batch_bytes, temp, total = step_bytes(analysis, frozen, state, batch)
    host = process_memory()["rss"] if target == "cpu" else 0
    total += host
    return MemoryPlan(model, devices, data, model_axis, batch_size, prompt_length, text_tokens, str(weights_dtype),
                      frozen_bytes, prompt_bytes, batch_bytes, temp, proxy, total,
                      sum(math.prod(x.shape) * x.dtype.itemsize for x in jax.tree.leaves(frozen)),
                      micro_batches=micro_batches, remat=net.remat, method=method_name,
                      flops=float(cost.get("flops", 0.0)), collectives=collectives, fsdp=fsdp, target=target,
                      host_bytes=host, quantize=quantize)


_NO_BUFFER = {"parameter", "get-tuple-element", "bitcast", "tuple"}  # instructions that make no buffer
_INSTRUCTION = re.compile(r"\s*(?:ROOT )?%?[\w.\-]+ = \w+\[([\d,]*)\]\S* ([\w\-]+)\(")


def weight_copies(hlo_text: str, frozen) -> dict[str, int]:
    """Instructions of a compiled program (`executable.as_text()`) that write a buffer of a frozen
    weight's whole shape (matrices and stacks of them), by opcode: copies, conversions, transposes
    or fusions of the weights. A step should hold none; a scan's slice of one layer is not counted."""
    import jax

    shapes = {tuple(x.shape) for x in jax.tree.leaves(frozen) if len(x.shape) >= 2}
    found: dict[str, int] = {}
    for line in hlo_text.splitlines():
        m = _INSTRUCTION.match(line)
        if m and m.group(2) not in _NO_BUFFER and tuple(int(d) for d in m.group(1).split(",") if d) in shapes:
            found[m.group(2)] = found.get(m.group(2), 0) + 1
    return found


def step_bytes(analysis, frozen, state, batch) -> tuple[int, int, int, int, int]:
    """(frozen, prompt + optimizer, batch, temporaries, total) bytes per device of a compiled step
    (`executable.memory_analysis()` and its arguments, arrays or shape structs): the arguments, the
    temporaries, and the outputs the donated state does not take back."""
    import jax

    parts = [sum(_leaf_bytes(x) for x in jax.tree.leaves(tree)) for tree in (frozen, state, batch)]
    temp = int(analysis.temp_size_in_bytes)
    return (*parts, temp, sum(parts) + temp + int(analysis.output_size_in_bytes - analysis.alias_size_in_bytes))


def process_memory(pid: int | str = "self") -> dict[str, int]:
    """A process's resident memory and its high-water mark in bytes, {"rss": ..., "peak": ...}
    (Linux `/proc/PID/status`; 0 where there is none)."""
    names = {"VmRSS": "rss", "VmHWM": "peak"}
    found = dict.fromkeys(names.values(), 0)
    try:
        with open(f"/proc/{pid}/status") as f:
            for line in f:
                key, _, value = line.partition(":")
                if key in names:
                    found[names[key]] = int(value.split()[0]) * 1024
    except (OSError, ValueError):
        pass
    return found


def plans(model: str, devices: int, meshes: list, batch_size: int, prompt_length: int = 20,
          text_tokens: int = 64, dtype: str = "bfloat16", micro_batches: int = 1, remat: bool | str = False,
          method: str = "soft", target: str = "accelerator", target_tokens: int | None = None,
          quantize: str = "none") -> list[MemoryPlan]:
    """One plan per mesh (a `config.MeshSpec`, or `(data, model)`), compiled here where this process
    has the devices (an accelerator's, for an accelerator target; a CPU's), else on `devices`
    virtual CPU devices in one subprocess."""
    import jax

    meshes = [_mesh_spec(m) for m in meshes]
    common = dict(model=model, devices=devices, batch_size=batch_size, prompt_length=prompt_length,
                  text_tokens=text_tokens, dtype=dtype, micro_batches=micro_batches, remat=remat, method=method,
                  target=target, target_tokens=target_tokens, quantize=quantize)
    here = jax.default_backend() == "cpu" or target == "accelerator"
    if here and jax.device_count() >= devices:
        return [plan_here(data=m.data, model_axis=m.model, fsdp=m.fsdp, **common) for m in meshes]
    env = {**os.environ, "JAX_PLATFORMS": "cpu",
           "XLA_FLAGS": f"{os.environ.get('XLA_FLAGS', '')} --xla_force_host_platform_device_count={devices}"}
    request = json.dumps({"common": common, "meshes": meshes})
    proc = subprocess.run([sys.executable, "-m", "jaxprompt.parallel.plan", request], env=env, capture_output=True, text=True)
    if proc.returncode != 0:
        lines = [line for line in proc.stderr.strip().splitlines() if line.strip()]
        raise RuntimeError(f"planning failed: {lines[-1] if lines else 'no output'}")
    return [MemoryPlan(**p) for p in json.loads(proc.stdout.strip().splitlines()[-1])]


def _mesh_spec(mesh) -> MeshSpec:  # from itself, (data, model) or (data, model, fsdp)
    return MeshSpec(*mesh, False) if len(mesh) == 2 else MeshSpec(*mesh)


def plan(model: str, devices: int, data: int, model_axis: int, batch_size: int, fsdp: bool = False,
         **options) -> MemoryPlan:
    return plans(model, devices, [MeshSpec(data, model_axis, fsdp)], batch_size, **options)[0]


def candidate_meshes(devices: int, batch_size: int) -> list[MeshSpec]:
    """Every mesh over all `devices` whose batch split divides the batch: `data=A,model=B`, model
    axis ascending, then `data=A,fsdp=B` (B > 1) where the batch splits over every device."""
    divisors = [m for m in range(1, devices + 1) if devices % m == 0]
    tensor = [MeshSpec(devices // m, m, False) for m in divisors if batch_size % (devices // m) == 0]
    fsdp = [MeshSpec(devices // m, m, True) for m in divisors if m > 1 and batch_size % devices == 0]
    return tensor + fsdp


def smallest_model_axis(candidates: list[MemoryPlan], device_memory: int) -> MemoryPlan | None:
    """The plan with the smallest model axis whose step fits `device_memory` (of two layouts with
    that axis, the one that sends less)."""
    fitting = [p for p in candidates if p.fits(device_memory)]
    return min(fitting, key=lambda p: (p.model_axis, sum(p.collectives.values())), default=None)


if __name__ == "__main__":  # the subprocess side of `plans`
    request = json.loads(sys.argv[1])
    print(json.dumps([dataclasses.asdict(plan_here(data=m.data, model_axis=m.model, fsdp=m.fsdp, **request["common"]))
                      for m in map(_mesh_spec, request["meshes"])]))
