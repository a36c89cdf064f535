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

Quantized frozen weights (docs/quantization.md): `--quantize int8|int4` holds jaxprompt's layer
kernels in 8 bits or NF4 and, on a CUDA device, loads PEFT's model through bitsandbytes the same
way (LLM.int8(); 4-bit NF4 with bf16 compute, blocks of 64): the side-by-side of the issue, with
each side's peak device memory. `--text-tokens` lengthens every example (Llama-3.1-8B at sequence
2048: `--models llama-3.1-8b --batch 1 --text-tokens 2028 --dtype bfloat16 --quantize int8 --remat`).
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
from jaxprompt.models.quantize import quantize_params
from jaxprompt.precision import Policy
from jaxprompt.prompts import METHODS
from jaxprompt.prompts.loss import prompt_loss
from jaxprompt.training.optim import make_optimizer
from jaxprompt.training.step import TrainState, make_train_step

# examples per step (a 1B model's step takes seconds per example on a CPU)
BATCH = {"llama-3.2-1b": 4}
DEFAULT_BATCH = 32


def workload(batch: int, prompt_len: int, vocab: int, seed: int = 0, text_tokens: int = 16) -> list[Encoded]:
    """[3 fixed tokens][P virtual][text_tokens - 5 input][2 target]."""
    rng = np.random.RandomState(seed)
    fixed = [4342, 389, 734]  # "Here are two"
    out = []
    for _ in range(batch):
        text = list(rng.randint(0, min(vocab, 50257), text_tokens - 3))
        out.append(Encoded(fixed + [0] * prompt_len + text, [-1] * 3 + list(range(prompt_len)) + [-1] * len(text), 2))
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
def frozen_model(name: str, dtype: str, quantize: str = "none", remat: bool = False):
    """The model and its random frozen weights (quantized as `Session.load(quantize=...)` holds
    them), made once: the timed sides share them."""
    model = Model(preset(MODELS[name]), remat=remat)
    frozen = Policy.of(dtype).cast_frozen(model.init(jax.random.key(0)))
    return model, quantize_params(model.config, frozen, quantize)


def bench_jax(name: str, examples, prompt_len: int, dtype: str, shared: bool, quantize: str = "none",
              remat: bool = False):
    """A jaxprompt training step to time (`run()` blocks until it is done), and its model FLOPs."""
    model, frozen = frozen_model(name, dtype, quantize, remat)
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


def bitsandbytes_model(name: str, quantize: str, device):
    """The preset's architecture (random weights) loaded through bitsandbytes, as QLoRA-style PEFT
    runs hold a frozen model: LLM.int8() (Dettmers et al. 2022) or NF4 with bf16 compute. Needs a
    CUDA device and `pip install bitsandbytes`; not run on the developers' CPU machine."""
    import tempfile

    import torch
    from transformers import AutoModelForCausalLM, BitsAndBytesConfig

    how = (BitsAndBytesConfig(load_in_8bit=True) if quantize == "int8" else
           BitsAndBytesConfig(load_in_4bit=True, bnb_4bit_quant_type="nf4", bnb_4bit_compute_dtype=torch.bfloat16))
    with tempfile.TemporaryDirectory() as tmp:
        hf_model(name, "bfloat16", "cpu").save_pretrained(tmp)
        return AutoModelForCausalLM.from_pretrained(tmp, quantization_config=how, device_map={"": device}).eval()


def bench_peft(name: str, examples, prompt_len: int, dtype: str, quantize: str = "none", remat: bool = False):
    """PEFT's prompt-tuning training step on the same examples, to time (`quantize`: its frozen
    model through bitsandbytes; `remat`: transformers' gradient checkpointing)."""
    from peft import PromptTuningConfig, get_peft_model

    torch, device = torch_setup()
    base = hf_model(name, dtype, device) if quantize == "none" else bitsandbytes_model(name, quantize, device)
    if remat:
        base.gradient_checkpointing_enable()
    model = get_peft_model(base, PromptTuningConfig(task_type="CAUSAL_LM", num_virtual_tokens=prompt_len)).eval()
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
    p.add_argument("--quantize", choices=("none", "int8", "int4"), default="none",
                   help="frozen matmul weights in 8 bits or NF4 (PEFT: through bitsandbytes, CUDA only)")
    p.add_argument("--text-tokens", type=int, default=16, help="text tokens per example, beside the prompt")
    p.add_argument("--remat", action="store_true", help="recompute each layer in the backward pass (both sides)")
    p.add_argument("--steps", type=int, default=5, help="timed rounds: each side one step per round, in turn")
    p.add_argument("--no-peft", action="store_true", help="skip the PyTorch side (e.g. no torch on this machine)")
    p.add_argument("--json", default=None)
    args = p.parse_args(argv)

    peak = matmul_peak(jnp.dtype(jnp.bfloat16 if is_bf16(args.dtype) else jnp.float32))
    if args.quantize != "none" and not args.no_peft and jax.default_backend() != "gpu":
        p.error("--quantize compares with PEFT through bitsandbytes, which needs a CUDA device: add --no-peft")
    print(f"device: {jax.devices()[0].device_kind} x{jax.device_count()}, dtype {args.dtype}, "
          f"frozen matmul weights {args.quantize}, matmul peak {peak / 1e9:.1f} GFLOP/s; {load_average()}")
    if not args.no_peft:
        print(threads_line(torch_setup()[0]))
    rows = []
    for name in args.models.split(","):
        batch = args.batch if args.batch is not None else BATCH.get(name, DEFAULT_BATCH)
        examples = workload(batch, args.prompt_length, preset(MODELS[name]).vocab_size, text_tokens=args.text_tokens)
        tokens = sum(len(e) for e in examples)  # prompt + text tokens per step (the same count for PEFT)
        (shared, flops), (unshared, unshared_flops) = (
            bench_jax(name, examples, args.prompt_length, args.dtype, shared=s, quantize=args.quantize,
                      remat=args.remat) for s in (True, False))
        sides = {"shared": shared, "unshared": unshared}
        if not args.no_peft:
            sides["peft"] = bench_peft(name, examples, args.prompt_length, args.dtype, args.quantize, args.remat)
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
        row.update(peak_device_memory(not args.no_peft))
        if "jaxprompt_peak_bytes" in row:
            line += f"; peak device memory: jaxprompt {row['jaxprompt_peak_bytes'] / 2**30:.2f} GiB" + (
                f", PEFT {row['peft_peak_bytes'] / 2**30:.2f} GiB" if "peft_peak_bytes" in row else "")
        print(line, flush=True)
        rows.append(row)
        del sides, shared, unshared
        frozen_model.cache_clear()  # the next model's weights replace these
    if args.json:
        with open(args.json, "w") as f:
            json.dump({"peak_flop_s": peak, "dtype": args.dtype, "quantize": args.quantize, "rows": rows}, f, indent=2)


def peak_device_memory(peft: bool) -> dict:
    """Each side's peak device memory so far (GPU only: a CPU's is the process's, `scale_check.py`)."""
    if jax.default_backend() == "cpu":
        return {}
    out = {"jaxprompt_peak_bytes": jax.devices()[0].memory_stats().get("peak_bytes_in_use", 0)}
    if peft:
        import torch

        if torch.cuda.is_available():
            out["peft_peak_bytes"] = torch.cuda.max_memory_allocated()
    return out


if __name__ == "__main__":
    main()
