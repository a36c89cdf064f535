"""Training and decoding where users run: the Llama-3.2-1B, Llama-3.2-3B and Llama-3.1-8B shapes in
bf16, random weights made on the device (never read from disk), one table.

Training rows: a prompt method (soft prompt of 20 or 200 virtual tokens, prefix tuning, adaption
prompts) at a text length per example; the batch fills the device's memory by `jaxprompt plan`'s
figure, and remat is used only where plan says the step does not fit without it (policies of
`stack.REMAT`: none, then dots, then full). Each row prints tokens/s, MFU and the FLOP count it
uses, the device's measured peak memory against plan's figure for that step, and (rows marked
`peft`) PEFT's step on the same device, the two taking turns (`benchlib.interleaved`): the ratio
is the median of per-round ratios, with their range. Decode rows: the time of one decode step at
batch 1 and 8 against the bandwidth limit, weights + KV cache bytes / measured read bandwidth.

FLOPs counted (model FLOPs: what the step needs, not what the hardware does; remat's recomputation,
a kernel's masked tiles and dummy queries are not counted), per layer, W its matmul weights:
  every computed position: forward 2W, backward to the activations 2W (no weight gradients);
  attention per query and visible key: forward 4HK (q.k and p.v), backward 8HK;
  adaption prompts: the same per query and adapter slot, in the adapted layers;
  each predicted token: 2DV forward + 2DV backward for the unembedding.
A shared head (the virtual tokens) is computed once per batch, at batch 1, and counted once.

    python scripts/bench/bench_accel.py --rows tiny --memory 5e7      # a CPU: end to end, toy shape
    python scripts/bench/bench_accel.py --rows session --out DIR       # the GPU session's rows
    python scripts/bench/bench_accel.py --rows all --out DIR           # every shape (an hour or more)
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import subprocess
import sys
import time

HERE = os.path.dirname(os.path.abspath(__file__))
ROOT = os.path.dirname(os.path.dirname(HERE))
sys.path[:0] = [ROOT, HERE]

SHAPES = {"1b": "meta-llama/Llama-3.2-1B", "3b": "meta-llama/Llama-3.2-3B", "8b": "meta-llama/Llama-3.1-8B",
          "tiny": "meta-llama/Llama-3.2-1B"}
TINY = dict(d_model=64, d_embed=64, d_ff=256, n_layers=2, n_heads=4, n_kv_heads=2, head_dim=16, vocab_size=512)
DATASHEET_BF16 = {"H100": 989e12, "H200": 989e12}  # dense bf16 FLOP/s (PERF_NOTES.md)


def train_row(shape, method, length, text, batch="fill", peft=False):
    return dict(kind="train", shape=shape, method=method, length=length, text=text, batch=batch, peft=peft)


def decode_row(shape, batch, context=128, new=33):
    return dict(kind="decode", shape=shape, batch=batch, context=context, new=new)


ROWS = {
    "tiny": [train_row("tiny", "soft", 8, 24), train_row("tiny", "soft", 8, 24, batch=4, peft=True),
             train_row("tiny", "prefix", 8, 24, batch=4, peft=True), train_row("tiny", "adaption", 4, 24, batch=4, peft=True),
             decode_row("tiny", 1, 16, 5)],
    # one GPU session (scripts/bench/gpu_session.sh), most wanted first: a session cut short keeps
    # the rows it finished
    "session": [train_row("1b", "soft", 20, 512), train_row("3b", "soft", 200, 768, batch=4, peft=True),  # PEFT's
                train_row("8b", "soft", 20, 2048), decode_row("1b", 1), train_row("1b", "soft", 20, 2048),  # MetaMathQA
                decode_row("8b", 1), train_row("1b", "prefix", 50, 512), train_row("1b", "adaption", 10, 512),
                decode_row("1b", 8), decode_row("8b", 8)],
    "all": [train_row(s, m, p, t) for s in ("1b", "3b", "8b") for t in (512, 2048)
            for m, p in (("soft", 20), ("soft", 200), ("prefix", 50), ("adaption", 10))]
    + [train_row("3b", m, p, 768, batch=4, peft=True) for m, p in (("soft", 200), ("prefix", 50), ("adaption", 10))]
    + [decode_row(s, b) for s in ("1b", "8b") for b in (1, 8)],
}


# ---- the child: one row in a process of its own (its own peak memory) -----------------------------

def model_config(shape: str):
    from jaxprompt.models import preset

    config = preset(SHAPES[shape])
    return config.replace(**TINY) if shape == "tiny" else config


def device_weights(model, dtype):
    """Random weights made leaf by leaf on the device (N(0, 0.02), unit norms, zero biases)."""
    import jax
    import jax.numpy as jnp

    def leaf(path, spec, key):
        name = path[-1].key
        if name in ("scale", "bias"):
            return jnp.full(spec.shape, 1.0 if name == "scale" else 0.0, dtype)
        return jax.jit(lambda k: 0.02 * jax.random.normal(k, spec.shape, dtype))(key)

    flat, tree = jax.tree_util.tree_flatten_with_path(model.param_shapes(dtype))
    keys = jax.random.split(jax.random.key(0), len(flat))
    return model.hold_as_bits(jax.tree_util.tree_unflatten(tree, [leaf(p, s, k) for (p, s), k in zip(flat, keys)]))


def count_flops(config, method, P: int, text: int, batch: int, targets: int, adapted_layers: int = 0) -> float:
    """Model FLOPs of one step (the module docstring's count)."""
    import jax

    from jaxprompt.models import Model

    stack = Model(config).param_shapes()[Model(config).arch.stack_key]
    W = sum(x.shape[1] * x.shape[2] for x in jax.tree.leaves(stack) if x.ndim == 3)
    L, HK = config.n_layers, config.n_heads * config.head_dim
    weights = lambda positions: 4 * W * L * positions
    attention = lambda key_visits, layers=L: 12 * HK * layers * key_visits
    head = P if method == "soft" else 0
    before = P if method in ("soft", "prefix") else 0  # keys every text position sees first
    flops = weights(head) + attention(head * (head + 1) / 2)
    flops += batch * (weights(text) + attention(text * before + text * (text + 1) / 2))
    if method == "adaption":
        flops += batch * attention(text * P, adapted_layers)
    return flops + batch * targets * 4 * config.d_embed * config.vocab_size


def policies() -> tuple[str, ...]:
    """Remat policies to try, least recomputation first: bf16 on a CPU is always "full" (its layers
    cross the scan as bits, `precision.converts_layer_by_layer`, as `Session.load` runs them)."""
    from jaxprompt.precision import converts_layer_by_layer

    return ("full",) if converts_layer_by_layer("bfloat16") else ("none", "dots", "full")


def fill(memory: float, plan_at) -> tuple[int, str]:
    """(batch, remat) that fill `memory` (90%): the largest batch without remat where one example
    fits, else with "dots", else "full". `plan_at(batch, remat)` is plan's total bytes. Plan's
    figure is about linear in the batch: two plans place the line."""
    if not memory:
        raise SystemExit("no device memory to fill: give --memory (a CPU has no allocator limit)")
    for remat in policies():
        one, two = plan_at(1, remat), plan_at(2, remat)
        if one <= 0.9 * memory:
            per_row = max(two - one, 1)
            return max(1, int((0.9 * memory - one) // per_row) + 1), remat
    raise SystemExit(f"one example does not fit {memory / 2**30:.1f} GiB even with full remat")


def run_train(row: dict, args) -> dict:
    import jax
    import jax.numpy as jnp
    import numpy as np
    from benchlib import interleaved, matmul_peak, ratios

    from jaxprompt.data.batches import collate
    from jaxprompt.data.templates import Encoded
    from jaxprompt.models import Model
    from jaxprompt.parallel.plan import plan_here, step_bytes, weight_copies
    from jaxprompt.parallel.strategies import MeshParallel
    from jaxprompt.prompts import METHODS
    from jaxprompt.prompts.loss import prompt_loss
    from jaxprompt.training.optim import OptimizerConfig, make_optimizer
    from jaxprompt.training.step import TrainState

    config = model_config(row["shape"])
    P, text, targets = row["length"], row["text"], max(1, row["text"] // 4)
    method = METHODS[row["method"]](length=P)  # its shapes: no init pool needed
    virtual = P if method.takes_positions else 0
    device = jax.devices()[0]
    memory = args.memory or (device.memory_stats() or {}).get("bytes_limit", 0)
    name = config if row["shape"] == "tiny" else SHAPES[row["shape"]]
    plan_at = lambda b, remat: plan_here(name, 1, 1, 1, b, P, text, "bfloat16", remat=remat, method=row["method"],
                                         target_tokens=targets).total_bytes
    batch, remat = (row["batch"], policies()[0]) if row["batch"] != "fill" else fill(memory, plan_at)
    model = Model(config, remat=remat, attention=args.attention)
    frozen = device_weights(model, jnp.bfloat16)
    prompt = method.init(jax.random.key(1), model, frozen, P)
    optimizer = make_optimizer(OptimizerConfig(lr=1e-3), prompt)
    rng = np.random.RandomState(0)
    rows = [Encoded([0] * virtual + list(rng.randint(0, config.vocab_size, text)), list(range(virtual)) + [-1] * text,
                    targets) for _ in range(batch)]
    mp = MeshParallel(1, 1, jax.devices()[:1], n_layers=config.n_layers)
    step = mp.train_step(prompt_loss(model, method), optimizer)
    holder = [mp.put_state(TrainState.create(prompt, optimizer, jax.random.PRNGKey(0)))]
    frozen, placed = mp.put_frozen(frozen), mp.put_batch(collate(rows, 0, shared_len=virtual))
    t = time.perf_counter()
    compiled = step.lower(holder[0], frozen, placed).compile()
    compile_s = time.perf_counter() - t
    planned = step_bytes(compiled.memory_analysis(), frozen, holder[0], placed)[-1]  # plan's count, this program

    def ours():
        holder[0], metrics = compiled(holder[0], frozen, placed)
        metrics["loss"].block_until_ready()

    sides = {"jaxprompt": ours}
    if row["peft"]:
        sides["peft"], peft_peak = peft_step(config, row["method"], P, batch, rows, targets)
    times = interleaved(sides, args.rounds)
    seconds = float(np.median(times["jaxprompt"]))
    tokens = batch * (virtual + text)  # PEFT's step reads as many: its virtual tokens lead every row
    flops = count_flops(config, row["method"], P, text, batch, targets,
                        method.n_layers(model) if row["method"] == "adaption" else 0)
    stats = device.memory_stats() or {}
    out = dict(row, batch=batch, remat=remat, attention=model.attention, tokens_per_s=tokens / seconds,
               step_s=seconds, flops=flops, flop_s=flops / seconds, matmul_peak=matmul_peak(jnp.bfloat16),
               peak_bytes=stats.get("peak_bytes_in_use"), planned_bytes=planned, memory=memory, compile_s=compile_s,
               weight_copies=weight_copies(compiled.as_text(), frozen))
    if row["peft"]:
        ratio, low, high = ratios(times["peft"], times["jaxprompt"])
        out.update(peft_tokens_per_s=tokens / float(np.median(times["peft"])), ratio=ratio, ratio_range=[low, high],
                   peft_peak_bytes=peft_peak())
    return out


def peft_step(config, method: str, P: int, batch: int, rows, targets: int):
    """PEFT's training step of `method` on the same rows, weights made on the same device in bf16;
    and a function giving its peak memory."""
    from benchlib import torch_setup, torch_sync
    from peft import AdaptionPromptConfig, PrefixTuningConfig, PromptTuningConfig, get_peft_model
    from transformers import AutoConfig, AutoModelForCausalLM

    from jaxprompt.models import config_to_hf

    torch, device = torch_setup()
    hf = config_to_hf(config)
    hf_config = AutoConfig.for_model(hf.pop("model_type"), **hf)
    torch.manual_seed(0)
    with device:
        base = AutoModelForCausalLM.from_config(hf_config, dtype=torch.bfloat16)
    peft_config = {"soft": lambda: PromptTuningConfig(task_type="CAUSAL_LM", num_virtual_tokens=P),
                   "prefix": lambda: PrefixTuningConfig(task_type="CAUSAL_LM", num_virtual_tokens=P),
                   "adaption": lambda: AdaptionPromptConfig(task_type="CAUSAL_LM", adapter_len=P,
                                                            adapter_layers=config.n_layers)}[method]()
    model = get_peft_model(base, peft_config).eval()
    ids = torch.tensor([[t for t, s in zip(e.tokens, e.slots) if s < 0] for e in rows], device=device)
    labels = torch.full_like(ids, -100)
    labels[:, -targets:] = ids[:, -targets:]
    mask = torch.ones_like(ids)
    optimizer = torch.optim.AdamW([p for p in model.parameters() if p.requires_grad], lr=1e-3)

    def run():
        optimizer.zero_grad(set_to_none=True)
        model(input_ids=ids, attention_mask=mask, labels=labels).loss.backward()
        optimizer.step()
        torch_sync(torch, device)

    return run, lambda: torch.cuda.max_memory_allocated() if device.type == "cuda" else None


def run_decode(row: dict, args) -> dict:
    """One decode step's time (generating `new` tokens less generating one, over new - 1) against
    the bytes it must read (every weight, the KV cache) over the measured read bandwidth."""
    import jax
    import jax.numpy as jnp
    from benchlib import bytes_of, memory_bandwidth, time_it

    from jaxprompt.inference.decode import generate
    from jaxprompt.models import Model

    config = model_config(row["shape"])
    model = Model(config, attention=args.attention)
    frozen = device_weights(model, jnp.bfloat16)
    frozen = frozen if jax.default_backend() == "cpu" else model.decoding_params(frozen)
    B, T = row["batch"], row["context"]
    embeds = model.embed(frozen, jnp.ones((B, T), jnp.int32))
    mask = jnp.ones((B, T), bool)
    run = jax.jit(lambda f, e, n: generate(model, f, e, mask, max_new_tokens=n)[0], static_argnums=2)
    steps = {n: time_it(lambda n=n: run(frozen, embeds, n).block_until_ready(), steps=args.rounds)
             for n in (1, row["new"])}
    step_s = (steps[row["new"]] - steps[1]) / (row["new"] - 1)
    kv = 2 * config.n_layers * B * (T + row["new"]) * config.n_kv_heads * config.head_dim * 2
    bandwidth = max(memory_bandwidth().values())
    limit = (bytes_of(frozen) + kv) / bandwidth
    return dict(row, step_s=step_s, bytes=int(bytes_of(frozen) + kv), bandwidth=bandwidth, limit_s=limit,
                fraction=limit / step_s)


# ---- the parent: rows in turn, one table ---------------------------------------------------------

def stamp(argv) -> str:
    commit = subprocess.run(["git", "-C", ROOT, "rev-parse", "--short", "HEAD"], capture_output=True, text=True).stdout
    dirty = subprocess.run(["git", "-C", ROOT, "status", "--porcelain"], capture_output=True, text=True).stdout
    import jax

    return (f"machine: {jax.devices()[0].device_kind} ({jax.default_backend()}), {platform.node()}, "
            f"{os.cpu_count()} CPUs; jax {jax.__version__}; commit {commit.strip()}{' (modified)' if dirty.strip() else ''}"
            f"; {time.strftime('%Y-%m-%d %H:%M UTC', time.gmtime())}\n\ncommand: `python scripts/bench/bench_accel.py "
            f"{' '.join(argv)}`")


def gb(n) -> str:
    return "n/a" if not n else f"{n / 2**30:.2f}"


def copies(found: dict) -> str:
    return ", ".join(f"{n} {op}" for op, n in sorted(found.items())) or "none"


def table(results: list[dict]) -> str:
    import jax

    kind = jax.devices()[0].device_kind
    sheet = next((v for k, v in DATASHEET_BF16.items() if k in kind), None)
    lines = ["| shape | method | text | batch | remat | tok/s | MFU (data sheet) | of matmul peak | peak GiB | plan GiB "
             "| plan/peak | PEFT tok/s | ratio (range) | weight copies |", "|" + "---|" * 14]
    for r in (r for r in results if r.get("kind") == "train" and "error" not in r):
        mfu = f"{100 * r['flop_s'] / sheet:.1f}%" if sheet else "n/a"
        ratio = f"{r['ratio']:.2f}x ({r['ratio_range'][0]:.2f}-{r['ratio_range'][1]:.2f})" if r.get("ratio") else ""
        plan_vs = f"{r['planned_bytes'] / r['peak_bytes']:.2f}" if r.get("peak_bytes") else "n/a"
        lines.append(f"| {r['shape']} | {r['method']} {r['length']} | {r['text']} | {r['batch']} | {r['remat']} | "
                     f"{r['tokens_per_s']:.0f} | {mfu} | {100 * r['flop_s'] / r['matmul_peak']:.1f}% | "
                     f"{gb(r['peak_bytes'])} | {gb(r['planned_bytes'])} | {plan_vs} | "
                     f"{r.get('peft_tokens_per_s', 0):.0f} | {ratio} | {copies(r['weight_copies'])} |")
    decode = [r for r in results if r.get("kind") == "decode" and "error" not in r]
    if decode:
        lines += ["", "| decode | batch | step ms | bytes read (GB) | limit ms | of the bandwidth limit |",
                  "|---|---|---|---|---|---|"]
        lines += [f"| {r['shape']} | {r['batch']} | {1e3 * r['step_s']:.2f} | {r['bytes'] / 1e9:.2f} | "
                  f"{1e3 * r['limit_s']:.2f} | {100 * r['fraction']:.0f}% |" for r in decode]
    lines += [f"\nfailed: {r['shape']} {r.get('method', 'decode')}: {r['error']}" for r in results if "error" in r]
    return "\n".join(lines)


def main(argv=None):
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--rows", choices=sorted(ROWS), default="tiny")
    p.add_argument("--only", default=None, help="comma-separated row numbers of the set (from 0)")
    p.add_argument("--rounds", type=int, default=5, help="timed rounds per row")
    p.add_argument("--attention", default="auto", help="Model.attention: auto, einsum, xla, cudnn")
    p.add_argument("--memory", type=float, default=None, help="device bytes to fill (default: the device's)")
    p.add_argument("--out", default=None, help="directory for accel.md and accel.json")
    p.add_argument("--timeout", type=int, default=600, help="seconds per row")
    p.add_argument("--child", default=None, help=argparse.SUPPRESS)
    args = p.parse_args(argv)
    if args.child:
        row = json.loads(args.child)
        print("RESULT " + json.dumps((run_train if row["kind"] == "train" else run_decode)(row, args)))
        return
    rows = ROWS[args.rows]
    rows = [rows[int(i)] for i in args.only.split(",")] if args.only else rows
    results, own = [], [a for a in (argv if argv is not None else sys.argv[1:])]
    for row in rows:
        env = dict(os.environ)  # a row with PEFT shares the GPU with torch: JAX takes less of it
        env["XLA_PYTHON_CLIENT_MEM_FRACTION"] = ".45" if row.get("peft") else ".92"
        cmd = [sys.executable, __file__, "--child", json.dumps(row), "--rounds", str(args.rounds),
               "--attention", args.attention] + (["--memory", str(args.memory)] if args.memory else [])
        try:
            proc = subprocess.run(cmd, capture_output=True, text=True, timeout=args.timeout, env=env)
            found = [line for line in proc.stdout.splitlines() if line.startswith("RESULT ")]
            result = json.loads(found[-1][7:]) if found else dict(row, error=(proc.stderr.strip().splitlines()
                                                                               or ["no output"])[-1][:300])
        except subprocess.TimeoutExpired:
            result = dict(row, error=f"over {args.timeout} s")
        results.append(result)
        print(json.dumps(result), flush=True)
        if args.out:  # after every row: a session cut short keeps what it measured
            os.makedirs(args.out, exist_ok=True)
            with open(os.path.join(args.out, "accel.json"), "w") as f:
                json.dump(results, f, indent=1)
            with open(os.path.join(args.out, "accel.md"), "w") as f:
                f.write(stamp(own) + "\n\n" + table(results) + "\n")
    print("\n" + stamp(own) + "\n\n" + table(results))


if __name__ == "__main__":
    main()
