"""Where a training step's time goes, by kernel: jaxprompt's step under `jax.profiler` (each
compiled instruction's time, named by what it computes from the program's own metadata), or
PEFT's under `torch.profiler`, at bench_train.py's workload (soft prompt of 20, 16 text tokens,
batch 4). One side per process, so the two never hold their weights at once.

    python scripts/bench/profile_step.py --side jax --shape small           # a toy Llama (developing)
    python scripts/bench/profile_step.py --side jax --shape 1b --steps 2    # Llama-3.2-1B's shape
    python scripts/bench/profile_step.py --side peft --shape 1b --steps 2
    python scripts/bench/profile_step.py --side jax --shape small --unstacked   # no per-layer slices

Times are summed over the threads that ran each kernel (CPU time, not wall time); the shares say
which kernels a step spends its work in.
"""

from __future__ import annotations

import argparse
import collections
import glob
import gzip
import json
import os
import re
import sys
import tempfile
import time

HERE = os.path.dirname(os.path.abspath(__file__))
sys.path[:0] = [os.path.dirname(os.path.dirname(HERE)), HERE]

SMALL = dict(d_model=256, d_embed=256, d_ff=1024, n_layers=4, n_heads=8, n_kv_heads=2, head_dim=32)
# what an instruction computes, from the JAX operation its metadata names (first match wins):
# the einsums of layers/attention.py, the unembedding of models/model.py, the rest by primitive
KINDS = [("attention", ("bgrts", "bgrtp", "bgrta", "dot_product_attention")), ("logits + loss", ("...e,ve->...v",
         "log_softmax", "logsumexp", "take_along_axis")), ("weight matmuls", ("dot_general",)),
         ("optimizer", ("optax", "adam")), ("converts (bits)", ("convert_element_type", "bitcast_convert"))]


def config_of(shape: str):
    from jaxprompt.models import preset

    config = preset("meta-llama/Llama-3.2-1B")
    return config.replace(**SMALL) if shape == "small" else config


def workload(config, batch: int):
    from bench_train import workload as examples

    return examples(batch, 20, config.vocab_size)


def instruction_kinds(hlo: str) -> dict[str, str]:
    """Instruction name -> what it computes (`KINDS`, from the JAX operation its metadata names),
    "+ matmul" where a fusion multiplies; containers (while, call) as "loop" (their kernels are
    timed on their own)."""
    dots, kinds = set(), {}
    computation = None
    for line in hlo.splitlines():
        head = re.match(r"\s*(?:ENTRY )?%?([\w.\-]+) .*\{\s*$", line)
        if head and " = " not in line:
            computation = head.group(1)
        m = re.match(r"\s*(?:ROOT )?%?([\w.\-]+) = .*? ([\w\-]+)\(", line)
        if not m:
            continue
        if m.group(2) in ("dot", "convolution"):
            dots.add(computation)
        op = re.search(r'op_name="([^"]+)"', line)
        op = op.group(1) if op else ""
        calls = re.search(r"calls=%?([\w.\-]+)", line)
        kind = "loop" if m.group(2) in ("while", "call", "conditional") else next(
            (k for k, marks in KINDS if any(mark in op for mark in marks)), f"other: {op.split('/')[-1] or m.group(2)}")
        kinds[m.group(1)] = (kind, calls.group(1) if calls else None, m.group(2) == "dot")
    return {name: kind + (" + matmul" if (calls in dots or is_dot) and "matmul" not in kind and kind != "loop" else "")
            for name, (kind, calls, is_dot) in kinds.items()}


def profile_jax(config, args) -> list[tuple[str, str, float]]:
    import jax

    from jaxprompt.config import OptimizerConfig
    from jaxprompt.data.batches import collate
    from jaxprompt.data.templates import common_prefix_length
    from jaxprompt.models import Model
    from jaxprompt.precision import Policy, converts_layer_by_layer
    from jaxprompt.prompts import METHODS
    from jaxprompt.prompts.loss import prompt_loss
    from jaxprompt.training.optim import make_optimizer
    from jaxprompt.training.step import TrainState, make_train_step

    model = Model(config, remat=converts_layer_by_layer(args.dtype))
    frozen = model.hold_as_bits(Policy.of(args.dtype).cast_frozen(model.init(jax.random.key(0))))
    if args.unstacked:  # one buffer per layer, an unrolled loop (as decoding holds them): no slices
        frozen = model.decoding_params(frozen)
    examples = workload(config, args.batch)
    method = METHODS["soft"](length=20)
    prompt = method.init(jax.random.key(1), model, frozen, 20)
    optimizer = make_optimizer(OptimizerConfig(lr=0.1), prompt, total_steps=1000)
    S = common_prefix_length(examples)
    step = jax.jit(make_train_step(prompt_loss(model, method), optimizer), donate_argnums=(0,))
    batch = jax.device_put(collate(examples, 0, shared_len=S))
    state = TrainState.create(prompt, optimizer, jax.random.PRNGKey(0))
    compiled = step.lower(state, frozen, batch).compile()
    kinds = instruction_kinds(compiled.as_text())
    state, metrics = compiled(state, frozen, batch)  # warm-up
    jax.block_until_ready(metrics)
    trace = tempfile.mkdtemp(prefix="jaxprompt-profile-")
    t = time.perf_counter()
    with jax.profiler.trace(trace, create_perfetto_trace=True):
        for _ in range(args.steps):
            state, metrics = compiled(state, frozen, batch)
        jax.block_until_ready(metrics)
    print(f"jaxprompt: {(time.perf_counter() - t) / args.steps:.2f} s a step (traced); trace in {trace}")
    events = json.load(gzip.open(glob.glob(f"{trace}/**/perfetto_trace.json.gz", recursive=True)[-1]))
    totals = collections.Counter()
    for e in events["traceEvents"] if isinstance(events, dict) else events:
        op = e.get("args", {}).get("hlo_op")
        if e.get("ph") == "X" and op and e.get("args", {}).get("hlo_module", "").startswith("jit_train_step"):
            totals[op] += e["dur"] / 1e6 / args.steps
    return [(op, kinds.get(op, "?"), s) for op, s in totals.items() if kinds.get(op) != "loop"]


def profile_peft(config, args) -> list[tuple[str, str, float]]:
    import torch
    from peft import PromptTuningConfig, get_peft_model
    from transformers import AutoConfig, AutoModelForCausalLM

    from jaxprompt.models import config_to_hf

    torch.set_num_threads(len(os.sched_getaffinity(0)))
    hf = config_to_hf(config)
    torch.manual_seed(0)
    base = AutoModelForCausalLM.from_config(AutoConfig.for_model(hf.pop("model_type"), **hf))
    base = base.to(torch.bfloat16 if args.dtype == "bfloat16" else torch.float32)
    model = get_peft_model(base, PromptTuningConfig(task_type="CAUSAL_LM", num_virtual_tokens=20)).eval()
    examples = workload(config, args.batch)
    ids = torch.tensor([[t for t, s in zip(e.tokens, e.slots) if s < 0] for e in examples])
    labels = torch.full_like(ids, -100)
    labels[:, -2:] = ids[:, -2:]
    optimizer = torch.optim.AdamW([p for p in model.parameters() if p.requires_grad], lr=0.1)

    def run():
        optimizer.zero_grad(set_to_none=True)
        model(input_ids=ids, attention_mask=torch.ones_like(ids), labels=labels).loss.backward()
        optimizer.step()

    run()
    t = time.perf_counter()
    with torch.profiler.profile(activities=[torch.profiler.ProfilerActivity.CPU]) as prof:
        for _ in range(args.steps):
            run()
    print(f"PEFT: {(time.perf_counter() - t) / args.steps:.2f} s a step (profiled)")
    return [(e.key, "torch op", e.self_cpu_time_total / 1e6 / args.steps) for e in prof.key_averages()]


def main(argv=None):
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--side", choices=("jax", "peft"), default="jax")
    p.add_argument("--shape", choices=("small", "1b"), default="small")
    p.add_argument("--dtype", default="float32")
    p.add_argument("--batch", type=int, default=4)
    p.add_argument("--steps", type=int, default=2)
    p.add_argument("--top", type=int, default=15)
    p.add_argument("--unstacked", action="store_true", help="jax: the layers as separate buffers, unrolled")
    args = p.parse_args(argv)
    config = config_of(args.shape)
    rows = (profile_jax if args.side == "jax" else profile_peft)(config, args)
    total = sum(s for _, _, s in rows)
    by_kind = collections.Counter()
    for _, kind, s in rows:
        by_kind[kind] += s
    print(f"\n{args.side}, {args.shape} shape, {args.dtype}, batch {args.batch}: {total:.2f} s of kernel time a step")
    if args.side == "jax":
        print("| what | s a step | share |\n|---|---|---|")
        for kind, s in by_kind.most_common():
            print(f"| {kind} | {s:.3f} | {100 * s / total:.1f}% |")
    print("| kernel | what | s a step | share |\n|---|---|---|---|")
    for op, kind, s in sorted(rows, key=lambda r: -r[2])[:args.top]:
        print(f"| {op} | {kind} | {s:.3f} | {100 * s / total:.1f}% |")


if __name__ == "__main__":
    main()
