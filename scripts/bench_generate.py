"""Greedy generation with a learned prompt: jaxprompt vs PyTorch PEFT `generate`, same run.

Batch of inputs "[20 virtual tokens] <6 input tokens>", 16 new tokens each (no early stop), random
weights of the real architectures. jaxprompt computes the prompt's keys/values once (prompt
cache) and decodes with a static-shape KV cache inside one compiled loop.

    python scripts/bench_generate.py
"""

from __future__ import annotations

import argparse
import json

import jax
import jax.numpy as jnp
import numpy as np

from bench_train import MODELS, time_it
from jaxprompt.models import PRESETS, preset
from jaxprompt.data import Encoded, collate
from jaxprompt.models import Model
from jaxprompt.models.generate import generate
from jaxprompt.precision import Policy
from jaxprompt.prompts import make_method
from jaxprompt.prompts.apply import prompt_inputs, shared_head


def inputs(batch: int, prompt_len: int, seed: int = 0):
    rng = np.random.RandomState(seed)
    return [list(rng.randint(0, 50000, 6)) for _ in range(batch)]


def bench_jax(name, texts, prompt_len, new_tokens, dtype, reps):
    model = Model(preset(MODELS[name]))
    frozen = Policy.of(dtype).cast_frozen(model.init(jax.random.key(0)))
    method = make_method("soft", length=prompt_len)
    prompt = method.init(jax.random.key(1), model, frozen, prompt_len)
    head_batch = {"tokens": jnp.zeros((1, prompt_len), jnp.int32), "slots": jnp.arange(prompt_len)[None],
                  "task_id": jnp.zeros((1,), jnp.int32)}
    head = jax.jit(shared_head, static_argnames=("model", "method"))(model, frozen, method, prompt, head_batch)
    batch = collate([Encoded(t, [-1] * len(t), 0) for t in texts], 0, padding="left")

    @jax.jit
    def run_generate(frozen, prompt, batch, head):
        embeds = prompt_inputs(model, frozen, method, prompt, batch).embeds
        return generate(model, frozen, embeds, batch["mask"], max_new_tokens=new_tokens, prefix=head)[0]

    return time_it(lambda: run_generate(frozen, prompt, batch, head).block_until_ready(), reps, warmup=1)


def bench_peft(name, texts, prompt_len, new_tokens, dtype, reps):
    import torch
    from peft import PromptTuningConfig, get_peft_model
    from transformers import AutoModelForCausalLM, GPT2Config, OPTConfig

    spec = dict(PRESETS[MODELS[name]])
    model_type = spec.pop("model_type")
    torch.manual_seed(0)
    base = AutoModelForCausalLM.from_config((GPT2Config if model_type == "gpt2" else OPTConfig)(**spec))
    base = base.to(torch.bfloat16 if dtype in ("bf16", "bfloat16") else torch.float32)
    model = get_peft_model(base, PromptTuningConfig(task_type="CAUSAL_LM", num_virtual_tokens=prompt_len)).eval()
    ids = torch.tensor(texts)
    mask = torch.ones_like(ids)

    def run():
        with torch.no_grad():
            model.generate(input_ids=ids, attention_mask=mask, max_new_tokens=new_tokens, min_new_tokens=new_tokens,
                           do_sample=False, pad_token_id=0)

    return time_it(run, reps, warmup=1)


def main(argv=None):
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--models", default="gpt2,opt-125m")
    p.add_argument("--batch", type=int, default=8)
    p.add_argument("--prompt-length", type=int, default=20)
    p.add_argument("--new-tokens", type=int, default=16)
    p.add_argument("--dtype", default="float32")
    p.add_argument("--reps", type=int, default=3)
    p.add_argument("--no-peft", action="store_true")
    p.add_argument("--json", default=None)
    args = p.parse_args(argv)
    print(f"device: {jax.devices()[0].device_kind}, dtype {args.dtype}, batch {args.batch}, "
          f"{args.new_tokens} new tokens, prompt length {args.prompt_length}")
    rows = []
    for name in args.models.split(","):
        texts = inputs(args.batch, args.prompt_length)
        produced = args.batch * args.new_tokens
        ours = bench_jax(name, texts, args.prompt_length, args.new_tokens, args.dtype, args.reps)
        row = {"model": name, "jaxprompt_tok_s": produced / ours}
        if not args.no_peft:
            theirs = bench_peft(name, texts, args.prompt_length, args.new_tokens, args.dtype, args.reps)
            row.update(peft_tok_s=produced / theirs, ratio=theirs / ours)
        rows.append(row)
        print(f"{name}: jaxprompt {row['jaxprompt_tok_s']:.1f} new tok/s"
              + (f", PEFT {row['peft_tok_s']:.1f} new tok/s, ratio {row['ratio']:.2f}x" if "ratio" in row else ""),
              flush=True)
    if args.json:
        with open(args.json, "w") as f:
            json.dump({"dtype": args.dtype, "rows": rows}, f, indent=2)


if __name__ == "__main__":
    main()
