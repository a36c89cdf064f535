"""Training-step throughput: jaxprompt vs PyTorch PEFT prompt tuning, same machine, same run.

Antonym-shaped workload: prompt length 20, batch 32, 16 text tokens per example (3 fixed template
tokens before the prompt, 11 input tokens, 2 target tokens). Random weights of the real
architectures (speed does not depend on the values). Prints tokens/s of both, their ratio, and
jaxprompt's achieved model FLOP/s (counted analytically, see `step_flops`) as a fraction of a
matmul peak measured on the same device.

    python scripts/bench_train.py                      # gpt2 and opt-125m, fp32
    python scripts/bench_train.py --dtype bfloat16     # on a GPU
"""

from __future__ import annotations

import argparse
import json
import statistics
import time

import jax
import jax.numpy as jnp
import numpy as np

from jaxprompt.models import PRESETS, preset
from jaxprompt.data import Encoded, collate, common_prefix_length
from jaxprompt.loss import prompt_loss
from jaxprompt.models import Model
from jaxprompt.optim import OptimizerConfig, make_optimizer
from jaxprompt.precision import Policy
from jaxprompt.prompts import make_method
from jaxprompt.train import TrainState, make_train_step

MODELS = {"gpt2": "gpt2", "opt-125m": "facebook/opt-125m", "gpt2-medium": "gpt2-medium", "opt-350m": "facebook/opt-350m"}


def matmul_peak(dtype, n: int = 2048, reps: int = 10) -> float:
    """FLOP/s of a large square matmul: the practical peak of this device for `dtype`."""
    a = jnp.ones((n, n), dtype)
    f = jax.jit(lambda a, b: a @ b)
    f(a, a).block_until_ready()
    times = []
    for _ in range(reps):
        t = time.perf_counter()
        f(a, a).block_until_ready()
        times.append(time.perf_counter() - t)
    return 2 * n**3 / min(times)


def workload(batch: int, prompt_len: int, vocab: int, seed: int = 0):
    """Encoded examples: [3 fixed tokens][P virtual][11 input][2 target]."""
    rng = np.random.RandomState(seed)
    fixed = [4342, 389, 734]  # "Here are two"
    out = []
    for _ in range(batch):
        text = list(rng.randint(0, min(vocab, 50257), 13))
        out.append(Encoded(fixed + [0] * prompt_len + text, [-1] * 3 + list(range(prompt_len)) + [-1] * 13, 2))
    return out


def forward_flops(c, queries: int, keys_per_query: float, logits: int) -> float:
    """Matmul FLOPs of a forward pass: `queries` token positions through every layer, each
    attending to `keys_per_query` keys on average, and `logits` output positions."""
    D, F, E = c.d_model, c.d_ff, c.d_embed
    per_position = c.n_layers * (2 * D * 3 * D + 2 * D * D + 2 * 2 * D * F + 2 * 2 * keys_per_query * D)
    if c.has_projection:
        per_position += 2 * 2 * E * D
    return queries * per_position + logits * 2 * E * c.vocab_size


def step_flops(c, examples, shared_len: int) -> float:
    """Model FLOPs of one prompt-tuning step: forward + backward to the inputs (no weight
    gradients), i.e. about twice the forward pass. Counts what is computed: with a shared head,
    its positions once at batch size 1."""
    S = shared_len
    rest = [len(e) - S for e in examples]
    head = forward_flops(c, S, (S + 1) / 2, 0)
    body = sum(forward_flops(c, r, S + (r + 1) / 2, 0) for r in rest)
    logits = forward_flops(c, 0, 0, sum(e.n_target for e in examples))
    return 2 * (head + body + logits)


def time_it(fn, steps: int, warmup: int = 2) -> float:
    for _ in range(warmup):
        fn()
    times = []
    for _ in range(steps):
        t = time.perf_counter()
        fn()
        times.append(time.perf_counter() - t)
    return statistics.median(times)


def bench_jax(name: str, examples, prompt_len: int, dtype: str, steps: int, shared: bool) -> dict:
    config = preset(MODELS[name])
    model = Model(config)
    frozen = Policy.of(dtype).cast_frozen(model.init(jax.random.key(0)))
    method = make_method("soft", length=prompt_len)
    prompt = method.init(jax.random.key(1), model, frozen, prompt_len)
    optimizer = make_optimizer(OptimizerConfig(lr=0.1), prompt)
    S = common_prefix_length(examples) if shared else 0
    step = jax.jit(make_train_step(prompt_loss(model, method, S), optimizer), donate_argnums=(0,))
    batch = jax.device_put(collate(examples, 0, shared_len=S))
    state = TrainState.create(prompt, optimizer, jax.random.PRNGKey(0))
    # XLA's cost analysis counts a scanned layer once, so count model FLOPs analytically
    flops = step_flops(config, examples, S)
    holder = [state]

    def run():
        holder[0], metrics = step(holder[0], frozen, batch)
        metrics["loss"].block_until_ready()

    seconds = time_it(run, steps)
    return {"seconds": seconds, "flops": flops, "shared_len": S}


def bench_peft(name: str, examples, prompt_len: int, dtype: str, steps: int) -> dict:
    import torch
    from peft import PromptTuningConfig, get_peft_model
    from transformers import AutoModelForCausalLM, GPT2Config, OPTConfig

    spec = dict(PRESETS[MODELS[name]])
    model_type = spec.pop("model_type")
    hf_config = (GPT2Config if model_type == "gpt2" else OPTConfig)(**spec)
    torch_dtype = torch.bfloat16 if dtype in ("bfloat16", "bf16") else torch.float32
    torch.manual_seed(0)
    base = AutoModelForCausalLM.from_config(hf_config).to(torch_dtype)
    model = get_peft_model(base, PromptTuningConfig(task_type="CAUSAL_LM", num_virtual_tokens=prompt_len))
    model.train()
    # PEFT prepends its virtual tokens to the whole input: the 16 text tokens follow them
    ids = torch.tensor([[t for t, s in zip(e.tokens, e.slots) if s < 0] for e in examples])
    labels = torch.full_like(ids, -100)
    labels[:, -2:] = ids[:, -2:]
    mask = torch.ones_like(ids)
    optimizer = torch.optim.AdamW([p for p in model.parameters() if p.requires_grad], lr=0.1)

    def run():
        optimizer.zero_grad(set_to_none=True)
        loss = model(input_ids=ids, attention_mask=mask, labels=labels).loss
        loss.backward()
        optimizer.step()

    return {"seconds": time_it(run, steps), "threads": torch.get_num_threads()}


def main(argv=None):
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--models", default="gpt2,opt-125m")
    p.add_argument("--batch", type=int, default=32)
    p.add_argument("--prompt-length", type=int, default=20)
    p.add_argument("--dtype", default="float32")
    p.add_argument("--steps", type=int, default=5)
    p.add_argument("--no-peft", action="store_true", help="skip the PyTorch side (e.g. no torch on this machine)")
    p.add_argument("--json", default=None)
    args = p.parse_args(argv)

    peak = matmul_peak(jnp.dtype(jnp.bfloat16 if args.dtype in ("bfloat16", "bf16") else jnp.float32))
    print(f"device: {jax.devices()[0].device_kind} x{jax.device_count()}, dtype {args.dtype}, "
          f"matmul peak {peak / 1e9:.1f} GFLOP/s")
    rows = []
    for name in args.models.split(","):
        examples = workload(args.batch, args.prompt_length, preset(MODELS[name]).vocab_size)
        tokens = sum(len(e) for e in examples)  # prompt + text tokens per step (same count for PEFT)
        ours = bench_jax(name, examples, args.prompt_length, args.dtype, args.steps, shared=True)
        unshared = bench_jax(name, examples, args.prompt_length, args.dtype, args.steps, shared=False)
        row = {"model": name, "tokens_per_step": tokens,
               "jaxprompt_tok_s": tokens / ours["seconds"], "jaxprompt_unshared_tok_s": tokens / unshared["seconds"],
               "jaxprompt_flop_s": ours["flops"] / ours["seconds"],
               "fraction_of_peak": ours["flops"] / ours["seconds"] / peak,
               "unshared_fraction_of_peak": unshared["flops"] / unshared["seconds"] / peak}
        if not args.no_peft:
            theirs = bench_peft(name, examples, args.prompt_length, args.dtype, args.steps)
            row["peft_tok_s"] = tokens / theirs["seconds"]
            row["ratio"] = row["jaxprompt_tok_s"] / row["peft_tok_s"]
            row["torch_threads"] = theirs["threads"]
        rows.append(row)
        print(f"{name}: jaxprompt {row['jaxprompt_tok_s']:.0f} tok/s "
              f"(without prefix sharing {row['jaxprompt_unshared_tok_s']:.0f}), "
              + (f"PEFT {row['peft_tok_s']:.0f} tok/s, ratio {row['ratio']:.2f}x; " if "ratio" in row else "")
              + f"{row['jaxprompt_flop_s'] / 1e9:.1f} GFLOP/s = {100 * row['fraction_of_peak']:.0f}% of matmul peak "
              f"(unshared {100 * row['unshared_fraction_of_peak']:.0f}%)", flush=True)
    if args.json:
        with open(args.json, "w") as f:
            json.dump({"peak_flop_s": peak, "dtype": args.dtype, "rows": rows}, f, indent=2)


if __name__ == "__main__":
    main()
