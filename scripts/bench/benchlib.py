"""What the benchmark scripts share: fair timing of jaxprompt against PyTorch PEFT in one process.

Fairness, on both sides: the same random-weight architecture (from the same preset), the same
inputs, the same device (on a GPU machine both run on the GPU, and every timing waits for the device
to finish), the same number of CPU threads, PEFT in eval mode (no dropout; gradients still flow),
warm-up runs before timing, and the median of several timed runs; where two sides are compared,
their runs take turns (`interleaved`) and the ratio is the median of the per-round ratios, with
its range.
"""

from __future__ import annotations

import os
import statistics
import time

import jax
import jax.numpy as jnp
import numpy as np

MODELS = {"gpt2": "gpt2", "opt-125m": "facebook/opt-125m", "gpt2-medium": "gpt2-medium",
          "opt-350m": "facebook/opt-350m", "llama-3.2-1b": "meta-llama/Llama-3.2-1B",
          "qwen2.5-0.5b": "Qwen/Qwen2.5-0.5B", "llama-3.1-8b": "meta-llama/Llama-3.1-8B"}


def time_it(fn, steps: int, warmup: int = 2) -> float:
    """Median seconds of `fn()` (which must block until its results exist) over `steps` runs."""
    for _ in range(warmup):
        fn()
    times = []
    for _ in range(steps):
        t = time.perf_counter()
        fn()
        times.append(time.perf_counter() - t)
    return statistics.median(times)


def interleaved(sides: dict, rounds: int, warmup: int = 2) -> dict[str, list[float]]:
    """Seconds of each side's `fn()` per round, the sides taking turns (A B C A B C ...) so that a
    host whose speed drifts within the run slows every side alike; `warmup` untimed calls each
    first. Read a comparison as the median and range of its per-round ratios (`ratios`)."""
    for fn in sides.values():
        for _ in range(warmup):
            fn()
    times = {name: [] for name in sides}
    for _ in range(rounds):
        for name, fn in sides.items():
            times[name].append(_timed(fn))
    return times


def ratios(slow: list[float], fast: list[float]) -> tuple[float, float, float]:
    """Median, lowest and highest of the per-round ratios slow / fast (how many times faster)."""
    r = sorted(a / b for a, b in zip(slow, fast))
    return statistics.median(r), r[0], r[-1]


def is_bf16(dtype: str) -> bool:
    return dtype in ("bfloat16", "bf16")


# ---- the PyTorch side ------------------------------------------------------------------------------

def torch_setup():
    """(torch, device): the GPU when JAX runs on one, else the CPU with XLA's thread count."""
    import torch

    if jax.default_backend() == "gpu":
        if not torch.cuda.is_available():
            raise SystemExit("JAX runs on a GPU but this torch has no CUDA: install a CUDA torch to compare fairly")
        return torch, torch.device("cuda")
    torch.set_num_threads(xla_cpu_threads())
    return torch, torch.device("cpu")


def torch_sync(torch, device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize()


def xla_cpu_threads() -> int:
    """XLA's CPU client runs its intra-op pool on every core the process may use."""
    return len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else os.cpu_count()


def hf_model(name: str, dtype: str, device):
    """The preset's architecture in transformers, random weights, eval mode, on `device`."""
    import torch
    from transformers import AutoConfig, AutoModelForCausalLM

    from jaxprompt.models import PRESETS

    spec = dict(PRESETS[MODELS[name]])
    config = AutoConfig.for_model(spec.pop("model_type"), **spec)
    torch.manual_seed(0)
    model = AutoModelForCausalLM.from_config(config)
    return model.to(device=device, dtype=torch.bfloat16 if is_bf16(dtype) else torch.float32).eval()


def threads_line(torch) -> str:
    if jax.default_backend() != "cpu":
        return f"device: {jax.devices()[0].device_kind} (JAX and torch on it)"
    return (f"CPU threads: XLA {xla_cpu_threads()} (its intra-op pool uses every core), "
            f"torch {torch.get_num_threads()}")


# ---- the machine ---------------------------------------------------------------------------------

def on_accelerator() -> bool:
    return jax.default_backend() != "cpu"


def matmul_peak(dtype, n: int | None = None, reps: int = 10) -> float:
    """FLOP/s of a large square matmul on random data, best of `reps`: the practical peak of this
    device for `dtype`. The size must fill the device: 2048 on a CPU, 8192 on an accelerator (an
    H200 reached 152 TFLOP/s in bf16 at 2048 and 754 at 8192, so a 2048 peak put a real step at
    173% of it)."""
    n = n or (8192 if on_accelerator() else 2048)
    a, b = (jax.random.normal(k, (n, n), dtype) for k in jax.random.split(jax.random.key(0)))
    f = jax.jit(lambda a, b: a @ b)
    f(a, b).block_until_ready()
    best = min(_timed(lambda: f(a, b).block_until_ready()) for _ in range(reps))
    return 2 * n**3 / best


def fraction_of_peak(flop_s: float, peak: float) -> str:
    """`flop_s / peak` as a percentage; a figure above the measured peak means the count or the
    peak is wrong, and is printed as that, never as a fraction above 100%."""
    return f"{100 * flop_s / peak:.0f}%" if flop_s <= peak else f"above the measured peak ({flop_s / 1e12:.1f} TFLOP/s)"


def memory_bandwidth(megabytes: int | None = None, reps: int = 10) -> dict[str, float]:
    """Bytes/s this machine moves: a copy into an existing buffer (numpy, read + write bytes
    counted) and an XLA reduction (read only, the traffic of a weight-streaming decode step). The
    larger is the ceiling a decode step works against. (An XLA `x + 1` would also time allocating
    and faulting in a fresh output buffer on every call, and understate the machine.)"""
    megabytes = megabytes or (4096 if on_accelerator() else 256)  # an H200 read 256 MB at 1.6 TB/s of its 4.8
    a = np.ones(megabytes * 2**20 // 4, np.float32)
    b = np.empty_like(a)
    copy = min(_timed(lambda: np.copyto(b, a)) for _ in range(reps))
    x = jnp.asarray(a)
    f = jax.jit(jnp.sum)
    f(x).block_until_ready()
    read = min(_timed(lambda: f(x).block_until_ready()) for _ in range(reps))
    return {"copy": 2 * a.nbytes / copy, "read": x.nbytes / read}


def _timed(fn) -> float:
    t = time.perf_counter()
    fn()
    return time.perf_counter() - t


def load_average() -> str:
    try:
        one, five, _ = os.getloadavg()
    except OSError:
        return "load average unknown"
    return f"load average {one:.2f} / {five:.2f} (1 / 5 min; a busy machine slows PyTorch more than XLA)"


def bytes_of(tree) -> int:
    return sum(np.prod(x.shape) * x.dtype.itemsize for x in jax.tree.leaves(tree))


# ---- docs/benchmarks.md: one current table per benchmark, stamped --------------------------------

DOCS = os.path.join(os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__)))), "docs",
                    "benchmarks.md")


def machine() -> str:
    """The device (or CPU model) and its count, as a stamp says it."""
    import platform

    device = jax.devices()[0]
    if device.platform != "cpu":
        return f"{len(jax.devices())} x {device.device_kind} (JAX {jax.__version__})"
    model = platform.processor() or "CPU"
    try:
        with open("/proc/cpuinfo") as f:
            model = next(line.split(":", 1)[1].strip() for line in f if line.startswith("model name"))
    except (OSError, StopIteration):
        pass
    return f"{os.cpu_count()}-core CPU ({model}; JAX {jax.__version__})"


def commit() -> str:
    """The repository's commit, with '+changes' where the working tree differs from it."""
    import subprocess

    root = os.path.dirname(DOCS)
    run = lambda *a: subprocess.run(["git", "-C", root, *a], capture_output=True, text=True).stdout.strip()
    head = run("rev-parse", "--short", "HEAD") or "unknown"
    return head + ("+changes" if run("status", "--porcelain", "--untracked-files=no") else "")


def stamp(argv: list[str] | None = None) -> str:
    """'machine, commit, command': where a table's figures come from."""
    import shlex
    import sys

    command = "python " + " ".join(shlex.quote(a) for a in (argv if argv is not None else sys.argv))
    return f"{machine()}, commit {commit()}, `{command}`"


def write_docs_table(name: str, markdown: str, path: str = DOCS) -> None:
    """Replaces the table between `<!-- bench:NAME -->` and `<!-- end bench:NAME -->` in
    docs/benchmarks.md with `markdown` and its stamp (the markers are added at the end if absent)."""
    import re

    block = f"<!-- bench:{name} -->\n{markdown.rstrip()}\n\n{stamp()}\n<!-- end bench:{name} -->"
    text = open(path).read() if os.path.exists(path) else "# Benchmarks\n"
    pattern = re.compile(rf"<!-- bench:{re.escape(name)} -->.*?<!-- end bench:{re.escape(name)} -->", re.S)
    text = pattern.sub(lambda _: block, text) if pattern.search(text) else text.rstrip() + "\n\n" + block + "\n"
    with open(path + ".tmp", "w") as f:
        f.write(text)
    os.replace(path + ".tmp", path)
