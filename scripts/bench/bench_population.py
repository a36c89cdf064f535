"""Many prompts in one step: a population of K prompts (jaxprompt/population.py) vs K single-prompt
steps run one after another, same model, same batch shape, same run.

For K = 1, 4, 8: tokens/s of both and their ratio (sequential time / population time), and the
achieved model FLOP/s (counted analytically by bench_train.step_flops) as a fraction of a matmul
peak measured here. Then, on paper, what to expect where this CPU cannot show it: a step reads
every frozen weight once whatever K is, so its arithmetic intensity (FLOPs per byte of weights) is
K times one prompt's. A small per-prompt batch leaves a GPU/TPU's matmul units idle, bound by
weight reads (and kernel launches); K prompts fill them, up to the device's ridge point (peak
FLOP/s / memory bandwidth). A CPU's ridge is low and one prompt already keeps it near its peak, so
the ratio here is near 1.

    python scripts/bench/bench_population.py                      # the embedded model
    python scripts/bench/bench_population.py --gpt2               # also a gpt2-shaped random model
"""

from __future__ import annotations

import argparse
import json
import statistics

import jax
import jax.numpy as jnp
import numpy as np
from bench_train import step_flops, workload
from benchlib import bytes_of, interleaved, load_average, matmul_peak, memory_bandwidth, ratios

from jaxprompt.config import Member, OptimizerConfig
from jaxprompt.data.batches import collate
from jaxprompt.data.templates import common_prefix_length
from jaxprompt.models import Model, load_pretrained, preset
from jaxprompt.paths import DEFAULT_MODEL
from jaxprompt.prompts import METHODS
from jaxprompt.prompts.loss import prompt_loss
from jaxprompt.training.optim import make_optimizer
from jaxprompt.training.population import initial_state, member_optimizer
from jaxprompt.training.step import TrainState, make_train_step, vmap_train_step

# (peak dense FLOP/s, memory bytes/s) from the vendors' data sheets, for the ridge point on paper
ACCELERATORS = {"H100 SXM (bf16)": (989e12, 3.35e12), "A100 80GB (bf16)": (312e12, 2.04e12),
                "TPU v4 (bf16)": (275e12, 1.2e12)}


def bench(model: Model, frozen, examples, prompt_len: int, sizes: list[int], steps: int) -> list[dict]:
    method = METHODS["soft"](length=prompt_len)
    S = common_prefix_length(examples)
    loss_fn = prompt_loss(model, method)
    c = OptimizerConfig(lr=0.1)
    prompts = [method.init(jax.random.key(k), model, frozen, prompt_len) for k in range(max(sizes))]
    batch = collate(examples, 0, shared_len=S)
    tokens = sum(len(e) for e in examples)  # per prompt and step
    flops = step_flops(model, examples, S)

    optimizer = make_optimizer(c, prompts[0], total_steps=1000)
    single = jax.jit(make_train_step(loss_fn, optimizer), donate_argnums=(0,))
    single_batch = jax.device_put(batch)
    rows = []
    for K in sizes:
        members = [Member(k, c.lr, "vocab_normal") for k in range(K)]
        pop_step = jax.jit(vmap_train_step(make_train_step(loss_fn, member_optimizer(c, prompts[0], 1000, c.lr))),
                           donate_argnums=(0,))
        pop_batch = jax.device_put({k: np.repeat(v[:, None], K, axis=1) for k, v in batch.items()})  # [B, K, ...]
        pop = [initial_state(prompts[:K], members, c, 1000)]
        # copies: the step donates its state
        states = [TrainState.create(jax.tree.map(jnp.copy, p), optimizer, jax.random.PRNGKey(k))
                  for k, p in enumerate(prompts[:K])]

        def population():
            pop[0], metrics = pop_step(pop[0], frozen, pop_batch)
            metrics["loss"].block_until_ready()

        def sequential():
            for k in range(K):
                states[k], metrics = single(states[k], frozen, single_batch)
            metrics["loss"].block_until_ready()

        times = interleaved({"population": population, "sequential": sequential}, steps)  # in turn
        t_pop, t_seq = (statistics.median(times[side]) for side in ("population", "sequential"))
        ratio, low, high = ratios(times["sequential"], times["population"])
        rows.append({"K": K, "population_tok_s": K * tokens / t_pop, "sequential_tok_s": K * tokens / t_seq,
                     "ratio": ratio, "ratio_range": [low, high], "population_flop_s": K * flops / t_pop,
                     "sequential_flop_s": K * flops / t_seq, "flops_per_prompt_step": flops,
                     "weight_bytes": int(bytes_of(frozen))})
    return rows


def main(argv=None):
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--sizes", default="1,4,8", help="population sizes K")
    p.add_argument("--batch", type=int, default=8, help="examples per prompt and step (small, as in prompt tuning)")
    p.add_argument("--prompt-length", type=int, default=20)
    p.add_argument("--steps", type=int, default=5)
    p.add_argument("--gpt2", action="store_true", help="also a gpt2-shaped model (random weights)")
    p.add_argument("--json", default=None)
    args = p.parse_args(argv)
    sizes = [int(k) for k in args.sizes.split(",")]

    peak = matmul_peak(jnp.float32)
    bandwidth = max(memory_bandwidth().values())
    print(f"device: {jax.devices()[0].device_kind}, float32 matmul peak {peak / 1e9:.1f} GFLOP/s, memory "
          f"{bandwidth / 1e9:.1f} GB/s (ridge {peak / bandwidth:.0f} FLOP/byte); {load_average()}")
    config, frozen = load_pretrained(DEFAULT_MODEL)
    models = [("embedded tiny-gpt2-wordnet", Model(config), frozen)]
    if args.gpt2:
        model = Model(preset("gpt2"))
        models.append(("gpt2 shape (random)", model, model.init(jax.random.key(0))))
    out = []
    for name, model, frozen in models:
        examples = workload(args.batch, args.prompt_length, model.config.vocab_size)
        rows = bench(model, frozen, examples, args.prompt_length, sizes, args.steps)
        print(f"\n{name}: batch {args.batch} per prompt, P={args.prompt_length}, "
              f"{rows[0]['flops_per_prompt_step'] / 1e9:.2f} GFLOP per prompt and step, "
              f"{rows[0]['weight_bytes'] / 1e6:.0f} MB of frozen weights")
        print(f"{'K':>3} {'population tok/s':>17} {'sequential tok/s':>17} {'ratio':>6} {'% peak (pop / seq)':>19} "
              f"{'FLOP/weight byte':>17}")
        for r in rows:
            intensity = r["K"] * r["flops_per_prompt_step"] / r["weight_bytes"]
            print(f"{r['K']:>3} {r['population_tok_s']:>17.0f} {r['sequential_tok_s']:>17.0f} {r['ratio']:>5.2f}x "
                  f"{100 * r['population_flop_s'] / peak:>9.0f}% / {100 * r['sequential_flop_s'] / peak:>3.0f}%  "
                  f"{intensity:>17.0f}")
        one = rows[0]["flops_per_prompt_step"] / rows[0]["weight_bytes"]
        print(f"on paper: one prompt's step does {one:.0f} FLOPs per byte of frozen weights it reads; K prompts "
              f"{one:.0f} x K. Below a device's ridge point the step waits on weight reads, so K prompts cost "
              "about what one does:")
        for device, (flop_s, byte_s) in ACCELERATORS.items():
            ridge = flop_s / byte_s
            print(f"  {device}: ridge {ridge:.0f} FLOP/byte -> up to ~{max(ridge / one, 1):.0f} prompts in the time "
                  "of one (before kernel-launch overheads, which also stay per step)")
        out.append({"model": name, "rows": rows})
    if args.json:
        with open(args.json, "w") as f:
            json.dump({"peak_flop_s": peak, "bandwidth_b_s": bandwidth, "models": out}, f, indent=2)


if __name__ == "__main__":
    main()
