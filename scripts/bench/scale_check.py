"""Every command on a checkpoint of Llama-3.2-1B's exact shape: wall time and peak RSS per phase,
against a budget, with a breakdown of where the time goes.

    nice -n 19 python scripts/bench/scale_check.py [--shape 1b|small] [--work DIR] [--quantize int8|int4]

The checkpoint is random (no download): Llama-3.2-1B's config (16 layers, hidden 2048, 32/8
heads, vocabulary 128,256, tied embeddings), bf16, written as three safetensors shards with an
index, as the Hub stores it. Its tokenizer is GPT-2's BPE (checkpoints/tiny-gpt2-wordnet,
50,257 tokens) configured to the model's vocabulary of 128,256: config.json names GPT-2's
<|endoftext|> (50256) as BOS/EOS, and ids 50,257..128,255 are embedding rows no text maps to (as
Llama-3's reserved special tokens). `--shape small` keeps the vocabulary and the layout but
shrinks the layers (for developing this script).

Each phase runs `jaxprompt ...` as a subprocess; its peak RSS is the child's own (os.wait4). The
phases share a compilation cache emptied at the start (`--work`/xla-cache): the first phase to
need a program compiles it, as a user's first runs do, and later phases read it. The budget of a
phase is

    bf16 weight bytes + 1.5 GB + plan's step beyond the weights (`jaxprompt.plan`, soft prompt)

(the weights once, the runtime and loader, and what XLA's buffer assignment says one step needs
besides the weights: prompt and optimizer state, batch, temporaries). The plan's total holds the
weights too; an earlier version added that total, counting the weights twice (6.83 GB instead of
4.36 for the 1B shape).
The breakdown phase times, in one process: load (GB/s, against a plain read of the same shard
files), fingerprint (first and remembered), compile, steps, evaluation and generation, with the
process's resident memory after each. `jaxprompt plan --target cpu` (the step as this CPU runs it,
and the host memory it measures) is compared with the soft phase's measured peak. It runs
unchanged on a GPU (the budget is then for host memory only).

With `--quantize int8|int4` every phase holds the layers' matmul weights in 8 or 4 bits (train
phases pass the flag; eval, generate, export and inspect load the runs as they trained; plan
plans it), and the budget of a phase is the issue's: the quantized weights (integers, scales and
the bf16 tables, as `jaxprompt plan` counts them) + 1.2 GB. A `load` phase then reports the
loader's own peak (a process that loads the session and exits): the quantized weights plus one
layer's kernel in float32, against the bf16 checkpoint it reads.
"""

from __future__ import annotations

import argparse
import json
import os
import resource
import shutil
import subprocess
import sys
import threading
import time

ROOT = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
sys.path.insert(0, ROOT)
from jaxprompt.parallel.plan import process_memory  # noqa: E402  (no JAX: plan.py loads it only where it compiles)

GB = 1e9
STEP = dict(steps=2, batch_size=2, prompt_length=8)
TEXT_TOKENS = 16  # an antonyms example: template text + the pair, with the target
SMALL = {"hidden_size": 64, "intermediate_size": 256, "num_hidden_layers": 2, "num_attention_heads": 4,
         "num_key_value_heads": 2, "head_dim": 16}


def hf_config(shape: str) -> dict:
    from jaxprompt.models import PRESETS

    hf = {**PRESETS["meta-llama/Llama-3.2-1B"], "bos_token_id": 50256, "eos_token_id": 50256}
    return {**hf, **SMALL} if shape == "small" else hf


def build_checkpoint(directory: str, shape: str, shards: int = 3) -> int:
    """A random bf16 checkpoint in `shards` safetensors files; returns its weight bytes."""
    import ml_dtypes
    import numpy as np
    from safetensors.numpy import save_file

    from jaxprompt.data.tokenizer import Tokenizer
    from jaxprompt.models import Model, config_from_hf, config_to_hf
    from jaxprompt.models.convert import to_hf_state_dict

    config = config_from_hf(hf_config(shape))
    rng = np.random.default_rng(0)

    def leaf(path, spec):
        if path[-1].key == "scale":  # norm weights
            return np.ones(spec.shape, ml_dtypes.bfloat16)
        return (0.02 * rng.standard_normal(spec.shape, np.float32)).astype(ml_dtypes.bfloat16)

    import jax

    params = jax.tree_util.tree_map_with_path(leaf, Model(config).param_shapes())
    state = to_hf_state_dict(config, params)
    del params
    total = sum(v.nbytes for v in state.values())
    os.makedirs(directory, exist_ok=True)
    names = [f"model-{i + 1:05d}-of-{shards:05d}.safetensors" for i in range(shards)]
    groups, filled = [[] for _ in range(shards)], 0
    for key, value in state.items():  # in order, each shard about total / shards bytes
        groups[min(int(filled * shards / total), shards - 1)].append(key)
        filled += value.nbytes
    weight_map = {}
    for name, keys in zip(names, groups):
        save_file({k: state[k] for k in keys}, os.path.join(directory, name), metadata={"format": "pt"})
        weight_map.update({k: name for k in keys})
    with open(os.path.join(directory, "model.safetensors.index.json"), "w") as f:
        json.dump({"metadata": {"total_size": total}, "weight_map": weight_map}, f)
    with open(os.path.join(directory, "config.json"), "w") as f:
        json.dump({**config_to_hf(config), "torch_dtype": "bfloat16"}, f, indent=2)
    Tokenizer.load(os.path.join(ROOT, "checkpoints", "tiny-gpt2-wordnet")).save(directory)
    return total


def run_phase(name: str, argv: list[str], log: list) -> dict:
    """Runs a child; its wall time and its own peak RSS (os.wait4's rusage, KiB on Linux).

    Some sandboxes (gVisor, seen on a GPU machine) answer wait4 with the caller's own peak for
    every child: a figure equal to this process's own is not the child's. The child's high-water
    mark read from /proc while it runs (`VmHWM`, the child alone, not processes it starts) is
    reported instead, marked as such, or none."""
    t0 = time.perf_counter()
    proc = subprocess.Popen(argv, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
    polled, stop = [0], threading.Event()
    watcher = threading.Thread(target=_watch_peak, args=(proc.pid, stop, polled), daemon=True)
    watcher.start()
    out = proc.stdout.read()
    stop.set()
    watcher.join()
    _, status, usage = os.wait4(proc.pid, 0)
    proc.returncode = os.waitstatus_to_exitcode(status)
    peak, source = usage.ru_maxrss * 1024, "wait4"
    if usage.ru_maxrss == resource.getrusage(resource.RUSAGE_SELF).ru_maxrss:
        peak, source = (polled[0], "VmHWM") if polled[0] else (None, "none")
    row = {"phase": name, "seconds": time.perf_counter() - t0, "peak_rss": peak, "peak_rss_source": source,
           "rc": proc.returncode, "tail": out.strip().splitlines()[-3:]}
    log.append(row)
    print(f"  {name:<18} {row['seconds']:8.1f} s  {_gb(peak):>8}  rc={row['rc']}"
          + ("" if source == "wait4" else f"  (wait4 gave this process's own peak; {source})"), flush=True)
    if proc.returncode:
        print("\n".join("    " + line for line in out.strip().splitlines()[-8:]), flush=True)
    return row


def _watch_peak(pid: int, stop: threading.Event, peak: list) -> None:
    """The highest `VmHWM` of process `pid` until `stop` (read every 0.1 s)."""
    while not stop.is_set():
        peak[0] = max(peak[0], process_memory(pid)["peak"])
        stop.wait(0.1)


def _gb(nbytes: int | None) -> str:
    return "n/a" if nbytes is None else f"{nbytes / GB:.2f} GB"


def jaxprompt(*args) -> list[str]:
    return [sys.executable, "-m", "jaxprompt", *map(str, args)]


def soft_plan(model_dir: str, target: str = "accelerator", quantize: str = "none") -> dict:
    """`jaxprompt.plan`'s plan of one soft-prompt step of the phases' shape on one device (its own
    process, as `jaxprompt plan` runs it)."""
    request = {"common": dict(model=model_dir, devices=1, batch_size=STEP["batch_size"],
                              prompt_length=STEP["prompt_length"], text_tokens=TEXT_TOKENS, dtype="bfloat16",
                              method="soft", target=target, quantize=quantize), "meshes": [[1, 1]]}
    out = subprocess.run([sys.executable, "-m", "jaxprompt.parallel.plan", json.dumps(request)], capture_output=True,
                         text=True, check=True).stdout
    return json.loads(out.strip().splitlines()[-1])[0]


def plan_step_bytes(model_dir: str) -> int:
    """Bytes `jaxprompt.plan` predicts one soft-prompt step needs on one device beside the frozen
    weights (its total less the weights)."""
    found = soft_plan(model_dir)
    return found["total_bytes"] - found["frozen_bytes"]


def load_only(model_dir: str, quantize: str) -> dict:
    """The session loaded and nothing else (the `--load-only` child): the loader's own peak."""
    from jaxprompt.data.tasks import BUILTIN
    from jaxprompt.prompts import make_method
    from jaxprompt.session import Session

    t = time.perf_counter()
    session = Session.load(model_dir, BUILTIN["antonyms"], make_method("soft", length=STEP["prompt_length"]),
                           dtype="bfloat16", cache=False, quantize=quantize)
    import jax

    held = sum(x.nbytes for x in jax.tree.leaves(session.frozen))
    return {"seconds": time.perf_counter() - t, "held_bytes": held, **process_memory()}


def breakdown(model_dir: str, quantize: str = "none") -> dict:
    """Seconds of each part of a run, in this process (the `--breakdown` child)."""
    import jax
    import jax.numpy as jnp

    from jaxprompt.data.batches import Batches
    from jaxprompt.data.tasks import BUILTIN
    from jaxprompt.inference.decode import generate
    from jaxprompt.prompts import METHODS
    from jaxprompt.prompts.loss import prompt_loss
    from jaxprompt.session import Session
    from jaxprompt.training.optim import OptimizerConfig, make_optimizer
    from jaxprompt.training.step import TrainState, make_train_step

    files = [os.path.join(model_dir, f) for f in os.listdir(model_dir) if f.endswith(".safetensors")]
    size = sum(os.path.getsize(f) for f in files)
    t = time.perf_counter()
    for f in files:
        with open(f, "rb") as handle:
            while handle.read(1 << 26):
                pass
    read_s = time.perf_counter() - t
    times = {"plain read of the shards (GB/s)": size / GB / read_s,
             "Python, JAX and jaxprompt: memory, RSS / peak so far (GB)":
                 tuple(m / GB for m in process_memory().values())}
    task, method = BUILTIN["antonyms"], METHODS["soft"](length=STEP["prompt_length"])

    def timed(name, fn):
        t = time.perf_counter()
        out = fn()
        jax.block_until_ready(out)
        times[name] = time.perf_counter() - t
        times[f"{name}: memory after it, RSS / peak so far (GB)"] = tuple(m / GB for m in process_memory().values())
        return out

    session = timed("load", lambda: Session.load(model_dir, task, method, dtype="bfloat16", cache=False,
                                                 quantize=quantize))
    times["load (GB/s)"] = size / GB / times["load"]
    timed("fingerprint", session.fingerprint)
    session.weights_id = None
    timed("fingerprint, again", session.fingerprint)
    rows = task.load(seed=0)
    train = session.encode(rows["train"][:16])
    batch = Batches(train, STEP["batch_size"], session.pad_id)(0)
    prompt = method.init(jax.random.key(0), session.model, session.frozen, session.n_virtual)
    optimizer = make_optimizer(OptimizerConfig(), prompt, total_steps=STEP["steps"])
    state = TrainState.create(prompt, optimizer, jax.random.PRNGKey(0))
    step = jax.jit(make_train_step(prompt_loss(session.model, method), optimizer), donate_argnums=(0,))
    compiled = timed("compile", lambda: step.lower(state, session.frozen, batch).compile())
    for _ in range(STEP["steps"]):
        state, metrics = compiled(state, session.frozen, batch)
    t = time.perf_counter()
    for _ in range(STEP["steps"]):
        state, metrics = compiled(state, session.frozen, batch)
    jax.block_until_ready(metrics)
    times[f"steps ({STEP['steps']}, compiled)"] = time.perf_counter() - t
    times.update(throughput(session, method, train, optimizer, step))
    eval_step = jax.jit(prompt_loss(session.model, method))
    timed("evaluation (4 examples, compile + run)",
          lambda: eval_step(state.params, session.frozen, batch, jax.random.key(0), 0))
    embeds = session.model.embed(session.frozen, jnp.ones((1, TEXT_TOKENS), jnp.int32))
    decode = lambda: generate(session.model, session.frozen, embeds, jnp.ones((1, TEXT_TOKENS), bool),
                              max_new_tokens=8)
    timed("generation (8 tokens, compile + run)", decode)
    timed("generation (8 tokens, compiled)", decode)
    times["generation, compiled (tokens/s, batch 1)"] = 8 / times["generation (8 tokens, compiled)"]
    return times


def _figure(name: str, value) -> str:
    if isinstance(value, (list, tuple)):  # memory: RSS / peak so far
        return " / ".join(f"{v:.2f}" for v in value)
    return f"{value:.2f}" + ("" if any(u in name for u in ("/s", "MFU")) else " s")


def throughput(session, method, train, optimizer, step) -> dict:
    """Training tokens/s and MFU: model FLOPs (forward + backward to the inputs, counted as
    `bench_train.step_flops` does) per second over a bf16 matmul's measured rate on this device.
    On an accelerator at every encoded training row (16) in one batch; on a CPU at the phase's batch."""
    import jax
    from bench_train import step_flops
    from benchlib import matmul_peak, time_it

    from jaxprompt.data.batches import collate
    from jaxprompt.training.step import TrainState

    accelerator = jax.default_backend() != "cpu"
    examples = train if accelerator else train[:STEP["batch_size"]]
    batch = jax.device_put(collate(examples, session.pad_id))
    prompt = method.init(jax.random.key(0), session.model, session.frozen, session.n_virtual)
    holder = [TrainState.create(prompt, optimizer, jax.random.PRNGKey(0))]  # the step donates it

    def run():
        holder[0], metrics = step(holder[0], session.frozen, batch)
        metrics["loss"].block_until_ready()

    seconds = time_it(run, steps=5 if accelerator else STEP["steps"])
    peak = matmul_peak(jax.numpy.bfloat16)
    flops = step_flops(session.model, examples, 0)
    return {f"training tokens/s (batch {len(examples)}, compiled)": sum(map(len, examples)) / seconds,
            "bf16 matmul peak, measured (TFLOP/s)": peak / 1e12,
            "MFU (%, model FLOPs per second over that peak)": 100 * flops / seconds / peak}


def main() -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--shape", choices=("1b", "small"), default="1b")
    p.add_argument("--work", default=os.path.join(ROOT, "scale-check"), help="checkpoint and runs go here")
    p.add_argument("--quantize", choices=("none", "int8", "int4"), default="none",
                   help="hold the layers' matmul weights in 8 or 4 bits in every phase")
    p.add_argument("--breakdown", help=argparse.SUPPRESS)  # the child that times the parts of a run
    p.add_argument("--load-only", help=argparse.SUPPRESS)  # the child that loads and exits
    args = p.parse_args()
    if args.breakdown:
        print(json.dumps(breakdown(args.breakdown, args.quantize)))
        return 0
    if args.load_only:
        print(json.dumps(load_only(args.load_only, args.quantize)))
        return 0
    model_dir, runs = os.path.join(args.work, f"llama-3.2-1b-{args.shape}"), os.path.join(args.work, "runs")
    shutil.rmtree(runs, ignore_errors=True)
    # a cold compilation cache, as a user's first runs have: compiling costs host memory that
    # reading a compiled program does not (0.39 GB at this shape before host_memory.py)
    os.environ["JAX_COMPILATION_CACHE_DIR"] = os.path.join(args.work, "xla-cache")
    shutil.rmtree(os.environ["JAX_COMPILATION_CACHE_DIR"], ignore_errors=True)
    t = time.perf_counter()
    weight_bytes = (json.load(open(os.path.join(model_dir, "model.safetensors.index.json")))["metadata"]["total_size"]
                    if os.path.isfile(os.path.join(model_dir, "config.json")) else build_checkpoint(model_dir, args.shape))
    print(f"checkpoint {model_dir}: {weight_bytes / GB:.2f} GB bf16 ({time.perf_counter() - t:.0f} s to build or read)")
    quantize = ["--quantize", args.quantize] if args.quantize != "none" else []
    if quantize:
        held = soft_plan(model_dir, quantize=args.quantize)["frozen_total_bytes"]
        budget = held + 1.2 * GB
        print(f"budget per phase: weights held {args.quantize} {held / GB:.2f} GB (integers, scales, bf16 tables) + "
              f"1.2 GB = {budget / GB:.2f} GB", flush=True)
    else:
        step_bytes = plan_step_bytes(model_dir)
        budget = weight_bytes + 1.5 * GB + step_bytes
        print(f"budget per phase: bf16 weights {weight_bytes / GB:.2f} GB + 1.5 GB + plan's step beyond the weights "
              f"{step_bytes / GB:.2f} GB "
              f"= {budget / GB:.2f} GB", flush=True)
    log: list = []
    if quantize:
        loaded = run_phase("load", [sys.executable, os.path.abspath(__file__), "--load-only", model_dir, *quantize],
                           log)
    common = ["--model", model_dir, "--dtype", "bfloat16", "--steps", STEP["steps"], "--batch-size",
              STEP["batch_size"], "--prompt-length", STEP["prompt_length"], "--eval-examples", 4, *quantize]
    for method in ("soft", "ptuning", "prefix", "adaption", "pez"):
        run_phase(f"train {method}", jaxprompt("train", "--method", method, *common, "--out",
                                               os.path.join(runs, method)), log)
    soft = os.path.join(runs, "soft")
    run_phase("eval", jaxprompt("eval", soft, "--examples", 4), log)
    run_phase("generate", jaxprompt("generate", soft, "--text", "hot", "--max-new-tokens", 8), log)
    run_phase("export (PEFT)", jaxprompt("export", os.path.join(runs, "prefix"), os.path.join(runs, "peft")), log)
    run_phase("import", jaxprompt("import", os.path.join(runs, "peft"), os.path.join(runs, "imported"),
                                  "--model", model_dir), log)
    run_phase("inspect", jaxprompt("inspect", os.path.join(runs, "pez")), log)
    run_phase("plan", jaxprompt("plan", "--model", model_dir, "--dtype", "bfloat16", "--batch-size",
                                STEP["batch_size"], "--prompt-length", STEP["prompt_length"],
                                "--text-tokens", TEXT_TOKENS, *quantize), log)
    run_phase("plan --target cpu", jaxprompt("plan", "--model", model_dir, "--dtype", "bfloat16", "--batch-size",
                                             STEP["batch_size"], "--prompt-length", STEP["prompt_length"],
                                             "--text-tokens", TEXT_TOKENS, "--target", "cpu", *quantize), log)
    parts = run_phase("breakdown", [sys.executable, os.path.abspath(__file__), "--breakdown", model_dir, *quantize],
                      log)
    print(f"\n| phase | wall time | peak RSS | within {budget / GB:.2f} GB |\n|---|---|---|---|")
    for row in log:
        ok = "unknown" if row["peak_rss"] is None else "yes" if row["peak_rss"] <= budget else "**no**"
        print(f"| {row['phase']} | {row['seconds']:.0f} s | {_gb(row['peak_rss'])} | {ok if not row['rc'] else 'failed'} |")
    if quantize and not loaded["rc"]:
        figures = json.loads(loaded["tail"][-1])
        print(f"\nload alone ({args.quantize}): {figures['seconds']:.1f} s, peak RSS {_gb(figures['peak'])} for "
              f"{_gb(figures['held_bytes'])} of weights held (the checkpoint: {_gb(weight_bytes)} bf16)")
    soft_peak = next(row["peak_rss"] for row in log if row["phase"] == "train soft")
    planned = soft_plan(model_dir, target="cpu", quantize=args.quantize)["total_bytes"]
    if soft_peak:
        print(f"\n`jaxprompt plan --target cpu` for the soft step: {planned / GB:.2f} GB, against train soft's "
              f"measured peak {soft_peak / GB:.2f} GB: {100 * (planned - soft_peak) / soft_peak:+.0f}%")
    if not parts["rc"]:
        times = json.loads(parts["tail"][-1])
        print("\nbreakdown (one process):\n" + "\n".join(f"  {k}: {_figure(k, v)}" for k, v in times.items()))
    return 0 if all(not r["rc"] and (r["peak_rss"] or 0) <= budget for r in log) else 1


if __name__ == "__main__":
    sys.exit(main())
