"""Training-step throughput: jaxprompt vs PyTorch PEFT prompt tuning, same machine, same run.

Antonym-shaped workload: prompt length 20, 16 text tokens per example (3 fixed template tokens
before the prompt, 11 input tokens, 2 target tokens). Random weights of the real architectures
(speed does not depend on the values). Prints tokens/s of both and their ratio (the sides' steps
take turns, and the ratio is the median of the per-round ratios, with its range), with jaxprompt's
shared head (the prompt and fixed template text computed once per batch) and without it, and
jaxprompt's achieved model FLOP/s (counted analytically, `step_flops`) as a fraction of a matmul
peak measured on the same device. See benchlib.py for what makes the comparison fair.

Where the speed comes from: the shared head removes the prompt's positions from every example but
one (a like-for-like per-token comparison is the unshared row), and logits are computed only where
targets are (PEFT's model computes all of them).

    python scripts/bench/bench_train.py                          # gpt2, opt-125m, Llama-3.2-1B shape; fp32
    python scripts/bench/bench_train.py --dtype bfloat16         # on a GPU
"""

from __future__ import annotations

import argparse
import functools
import json
import statistics

import jax
import jax.numpy as jnp
import numpy as np
from benchlib import (
    MODELS,
    fraction_of_peak,
    hf_model,
    interleaved,
    is_bf16,
    load_average,
    matmul_peak,
    ratios,
    threads_line,
    torch_setup,
    torch_sync,
)

from jaxprompt.config import OptimizerConfig
from jaxprompt.data.batches import collate
from jaxprompt.data.templates import Encoded, common_prefix_length
from jaxprompt.models import Model, preset
from jaxprompt.precision import Policy
from jaxprompt.prompts import METHODS
from jaxprompt.prompts.loss import prompt_loss
from jaxprompt.training.optim import make_optimizer
from jaxprompt.training.step import TrainState, make_train_step

# examples per step (a 1B model's step takes seconds per example on a CPU)
BATCH = {"llama-3.2-1b": 4}
DEFAULT_BATCH = 32


def workload(batch: int, prompt_len: int, vocab: int, seed: int = 0) -> list[Encoded]:
    """[3 fixed tokens][P virtual][11 input][2 target]."""
    rng = np.random.RandomState(seed)
    fixed = [4342, 389, 734]  # "Here are two"
    out = []
    for _ in range(batch):
        text = list(rng.randint(0, min(vocab, 50257), 13))
        out.append(Encoded(fixed + [0] * prompt_len + text, [-1] * 3 + list(range(prompt_len)) + [-1] * 13, 2))
    return out


def layer_matmul_weights(model: Model) -> int:
    """Weights one position multiplies through in one layer (every kernel of the layer stack)."""
    stack = model.param_shapes()[model.arch.stack_key]
    return sum(int(np.prod(x.shape[1:])) for path, x in jax.tree_util.tree_flatten_with_path(stack)[0]
               if path[-1].key == "kernel")


def forward_flops(model: Model, queries: float, keys_per_query: float, logits: int) -> float:
    """Matmul FLOPs of a forward pass: `queries` positions through every layer (weights, and
    attention to `keys_per_query` keys on average), and `logits` output positions."""
    c = model.config
    attention = 2 * 2 * keys_per_query * c.n_heads * c.head_dim
    per_position = c.n_layers * (2 * layer_matmul_weights(model) + attention)
    if c.has_projection:
        per_position += 2 * 2 * c.d_embed * c.d_model
    return queries * per_position + logits * 2 * c.d_embed * c.vocab_size


def step_flops(model: Model, examples, shared_len: int) -> float:
    """Model FLOPs of one prompt-tuning step: forward + backward to the inputs (no weight
    gradients), about twice the forward pass. Counts what is computed: with a shared head, its
    positions once at batch size 1."""
    S = shared_len
    head = forward_flops(model, S, (S + 1) / 2, 0)
    body = sum(forward_flops(model, len(e) - S, S + (len(e) - S + 1) / 2, 0) for e in examples)
    logits = forward_flops(model, 0, 0, sum(e.n_target for e in examples))
    return 2 * (head + body + logits)


@functools.cache
def frozen_model(name: str, dtype: str):
    """The model and its random frozen weights, made once: the timed sides share them."""
    model = Model(preset(MODELS[name]))
    return model, Policy.of(dtype).cast_frozen(model.init(jax.random.key(0)))


def bench_jax(name: str, examples, prompt_len: int, dtype: str, shared: bool):
    """A jaxprompt training step to time (`run()` blocks until it is done), and its model FLOPs."""
    model, frozen = frozen_model(name, dtype)
    method = METHODS["soft"](length=prompt_len)
    prompt = method.init(jax.random.key(1), model, frozen, prompt_len)
    optimizer = make_optimizer(OptimizerConfig(lr=0.1), prompt, total_steps=1000)
    S = common_prefix_length(examples) if shared else 0
    step = jax.jit(make_train_step(prompt_loss(model, method), optimizer), donate_argnums=(0,))
    batch = jax.device_put(collate(examples, 0, shared_len=S))
    holder = [TrainState.create(prompt, optimizer, jax.random.PRNGKey(0))]

    def run():
        holder[0], metrics = step(holder[0], frozen, batch)
        metrics["loss"].block_until_ready()

    # XLA's cost analysis counts a scanned layer once, so model FLOPs are counted analytically
    return run, step_flops(model, examples, S)


def bench_peft(name: str, examples, prompt_len: int, dtype: str):
    """PEFT's prompt-tuning training step on the same examples, to time."""
    from peft import PromptTuningConfig, get_peft_model

    torch, device = torch_setup()
    model = get_peft_model(hf_model(name, dtype, device),
                           PromptTuningConfig(task_type="CAUSAL_LM", num_virtual_tokens=prompt_len)).eval()
    # PEFT prepends its virtual tokens to the whole input: the 16 text tokens follow them
    ids = torch.tensor([[t for t, s in zip(e.tokens, e.slots) if s < 0] for e in examples], device=device)
    labels = torch.full_like(ids, -100)
    labels[:, -2:] = ids[:, -2:]
    mask = torch.ones_like(ids)
    optimizer = torch.optim.AdamW([p for p in model.parameters() if p.requires_grad], lr=0.1)

    def run():
        optimizer.zero_grad(set_to_none=True)
        model(input_ids=ids, attention_mask=mask, labels=labels).loss.backward()
        optimizer.step()
        torch_sync(torch, device)

    return run


def main(argv=None):
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--models", default="gpt2,opt-125m,llama-3.2-1b")
    p.add_argument("--batch", type=int, default=None, help="examples per step (default 32; Llama-3.2-1B 4)")
    p.add_argument("--prompt-length", type=int, default=20)
    p.add_argument("--dtype", default="float32")
    p.add_argument("--steps", type=int, default=5, help="timed rounds: each side one step per round, in turn")
    p.add_argument("--no-peft", action="store_true", help="skip the PyTorch side (e.g. no torch on this machine)")
    p.add_argument("--json", default=None)
    args = p.parse_args(argv)

    peak = matmul_peak(jnp.dtype(jnp.bfloat16 if is_bf16(args.dtype) else jnp.float32))
    print(f"device: {jax.devices()[0].device_kind} x{jax.device_count()}, dtype {args.dtype}, "
          f"matmul peak {peak / 1e9:.1f} GFLOP/s; {load_average()}")
    if not args.no_peft:
        print(threads_line(torch_setup()[0]))
    rows = []
    for name in args.models.split(","):
        batch = args.batch if args.batch is not None else BATCH.get(name, DEFAULT_BATCH)
        examples = workload(batch, args.prompt_length, preset(MODELS[name]).vocab_size)
        tokens = sum(len(e) for e in examples)  # prompt + text tokens per step (the same count for PEFT)
        (shared, flops), (unshared, unshared_flops) = (
            bench_jax(name, examples, args.prompt_length, args.dtype, shared=s) for s in (True, False))
        sides = {"shared": shared, "unshared": unshared}
        if not args.no_peft:
            sides["peft"] = bench_peft(name, examples, args.prompt_length, args.dtype)
        times = interleaved(sides, args.steps)  # jaxprompt, jaxprompt unshared, PEFT, in turn
        seconds = {side: statistics.median(t) for side, t in times.items()}
        row = {"model": name, "batch": batch, "tokens_per_step": tokens,
               "jaxprompt_tok_s": tokens / seconds["shared"], "jaxprompt_unshared_tok_s": tokens / seconds["unshared"],
               "fraction_of_peak": flops / seconds["shared"] / peak,
               "unshared_fraction_of_peak": unshared_flops / seconds["unshared"] / peak}
        line = (f"{name} (batch {batch}): jaxprompt {row['jaxprompt_tok_s']:.0f} tok/s, without the shared head "
                f"{row['jaxprompt_unshared_tok_s']:.0f} tok/s")
        if not args.no_peft:
            row["peft_tok_s"] = tokens / seconds["peft"]
            row["ratio"], low, high = ratios(times["peft"], times["shared"])
            row["ratio_range"] = [low, high]
            row["unshared_ratio"], ulow, uhigh = ratios(times["peft"], times["unshared"])
            line += (f"; PEFT {row['peft_tok_s']:.0f} tok/s; ratio {row['ratio']:.2f}x ({low:.2f}-{high:.2f}) "
                     f"(unshared {row['unshared_ratio']:.2f}x, {ulow:.2f}-{uhigh:.2f})")
        line += (f"; {fraction_of_peak(flops / seconds['shared'], peak)} of matmul peak "
                 f"(unshared {fraction_of_peak(unshared_flops / seconds['unshared'], peak)})")
        print(line, flush=True)
        rows.append(row)
        del sides, shared, unshared
        frozen_model.cache_clear()  # the next model's weights replace these
    if args.json:
        with open(args.json, "w") as f:
            json.dump({"peak_flop_s": peak, "dtype": args.dtype, "rows": rows}, f, indent=2)


if __name__ == "__main__":
    main()
