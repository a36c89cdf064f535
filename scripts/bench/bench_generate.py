"""Greedy generation with a learned prompt: jaxprompt vs PyTorch PEFT `generate`, same run.

Inputs "[P virtual tokens] <6 input tokens>", 16 new tokens each (no early stop), batch 1 and 8,
random weights of the real architectures. Two jaxprompt timings:

- cold: the prompt's keys/values are computed inside the timed call, as PEFT does on every call;
- warm: the prompt's keys/values come from the prompt cache (computed once per prompt).

Also the decode step's time against the memory-bandwidth limit: a step must read every weight
(the unembedding included) and the KV cache, so `bytes / bandwidth` (both measured here) is
the floor a step cannot beat on this machine (bandwidth: the larger of a measured copy and an XLA
reduction). See benchlib.py for what makes the comparison fair.

    python scripts/bench/bench_generate.py
    python scripts/bench/bench_generate.py --profile /tmp/trace    # a jax.profiler trace of the warm call
"""

from __future__ import annotations

import argparse
import json
import statistics
from functools import partial

import jax
import jax.numpy as jnp
import numpy as np
from benchlib import (
    MODELS,
    bytes_of,
    hf_model,
    interleaved,
    load_average,
    memory_bandwidth,
    ratios,
    threads_line,
    torch_setup,
    torch_sync,
)

from jaxprompt.data.batches import collate
from jaxprompt.data.templates import Encoded
from jaxprompt.inference.decode import generate
from jaxprompt.models import Model, preset
from jaxprompt.precision import Policy
from jaxprompt.prompts import METHODS
from jaxprompt.prompts.forward import prompt_inputs, shared_head


def texts(batch: int, length: int = 6, seed: int = 0) -> list[list[int]]:
    rng = np.random.RandomState(seed)
    return [list(rng.randint(0, 50000, length)) for _ in range(batch)]


class JaxGeneration:
    def __init__(self, name: str, prompt_len: int, dtype: str):
        self.model = Model(preset(MODELS[name]))
        self.frozen = self.model.decoding_params(Policy.of(dtype).cast_frozen(self.model.init(jax.random.key(0))))
        self.method = METHODS["soft"](length=prompt_len)
        self.prompt = self.method.init(jax.random.key(1), self.model, self.frozen, prompt_len)
        self.prompt_len = prompt_len
        head = {"tokens": jnp.zeros((1, prompt_len), jnp.int32), "slots": jnp.arange(prompt_len)[None],
                "task_id": jnp.zeros((1,), jnp.int32)}
        model, method = self.model, self.method

        @partial(jax.jit, static_argnames="new_tokens")
        def cold(frozen, prompt, batch, new_tokens):
            """The prompt's virtual tokens lead each row: their keys/values computed in the call."""
            inputs = prompt_inputs(model, frozen, method, prompt, batch)
            return generate(model, frozen, inputs.embeds, batch["mask"], max_new_tokens=new_tokens)[0]

        @partial(jax.jit, static_argnames="new_tokens")
        def warm(frozen, head_kv, batch, new_tokens):
            """The prompt's keys/values from the cache, attended by every row."""
            return generate(model, frozen, model.embed(frozen, batch["tokens"]), batch["mask"],
                            max_new_tokens=new_tokens, prefix=head_kv)[0]

        self.cold, self.warm = cold, warm
        self.head_kv = jax.jit(shared_head, static_argnames=("model", "method"))(model, self.frozen, method,
                                                                                   self.prompt, head)

    def batches(self, rows: list[list[int]]) -> tuple[dict, dict]:
        P = self.prompt_len
        with_prompt = collate([Encoded([0] * P + t, list(range(P)) + [-1] * len(t), 0) for t in rows], 0, "left",
                              buckets=(P + len(rows[0]),))
        text_only = collate([Encoded(t, [-1] * len(t), 0) for t in rows], 0, "left", buckets=(len(rows[0]),))
        return with_prompt, text_only

    def sides(self, rows, new_tokens: int) -> dict:
        """Calls to time, each blocking until its tokens exist: `cold` and `warm` generation of
        `new_tokens`, and `warm` of one token (generating n tokens is a prefill and n - 1 decode
        steps, so the two warm times give a decode step's)."""
        with_prompt, text_only = self.batches(rows)
        cold = lambda n: self.cold(self.frozen, self.prompt, with_prompt, new_tokens=n).block_until_ready()
        warm = lambda n: self.warm(self.frozen, self.head_kv, text_only, new_tokens=n).block_until_ready()
        return {"cold": lambda: cold(new_tokens), "warm": lambda: warm(new_tokens), "warm_one": lambda: warm(1)}

    def step_bytes(self, batch: int, slots: int) -> int:
        """Bytes a decode step must read: every weight, and the keys/values of `slots` positions."""
        c = self.model.config
        kv = 2 * c.n_layers * batch * slots * c.n_kv_heads * c.head_dim * jax.tree.leaves(self.frozen)[0].dtype.itemsize
        return bytes_of(self.frozen) + kv


def peft_side(name: str, rows, prompt_len: int, new_tokens: int, dtype: str):
    """A PEFT `generate` call to time, or None (with a line saying why) when its cached generation
    departs from its own forward pass: then it does other work than greedy decoding, and no ratio is fair."""
    import peft
    import transformers
    from peft import PromptTuningConfig, get_peft_model

    torch, device = torch_setup()
    model = get_peft_model(hf_model(name, dtype, device),
                           PromptTuningConfig(task_type="CAUSAL_LM", num_virtual_tokens=prompt_len)).eval()
    ids = torch.tensor(rows, device=device)
    mask = torch.ones_like(ids)

    def run():
        with torch.no_grad():
            out = model.generate(input_ids=ids, attention_mask=mask, max_new_tokens=new_tokens,
                                 min_new_tokens=new_tokens, do_sample=False, pad_token_id=0)
        torch_sync(torch, device)
        return out

    with torch.no_grad():  # greedy by recomputing the whole text at every step
        recomputed = ids
        for _ in range(new_tokens):
            logits = model(input_ids=recomputed, attention_mask=torch.ones_like(recomputed)).logits
            recomputed = torch.cat([recomputed, logits[:, -1].argmax(-1, keepdim=True)], dim=1)
    if not torch.equal(run()[:, -new_tokens:], recomputed[:, -new_tokens:]):  # also the timing's warm-up
        from packaging.version import Version

        why = ("peft <= 0.21 with transformers >= 5.24 re-inserts the prompt at every step"
               if Version(peft.__version__) < Version("0.22") and Version(transformers.__version__) >= Version("5.24")
               else "in low precision the cached and the recomputed logits can differ in their last bits and "
                    "pick another near-tied token (seen in bf16 on an H200 at batch 8, not at batch 1)")
        print(f"{name}: PEFT {peft.__version__} with transformers {transformers.__version__}: cached generate "
              f"departs from PEFT's own forward pass, so its time is not reported ({why})", flush=True)
        return None
    return run


def main(argv=None):
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--models", default="gpt2,opt-125m")
    p.add_argument("--batches", default="1,8")
    p.add_argument("--prompt-length", type=int, default=20)
    p.add_argument("--new-tokens", type=int, default=16)
    p.add_argument("--dtype", default="float32")
    p.add_argument("--reps", type=int, default=5)
    p.add_argument("--no-peft", action="store_true")
    p.add_argument("--profile", default=None, help="write a jax.profiler trace of one warm call here")
    p.add_argument("--json", default=None)
    args = p.parse_args(argv)
    measured = memory_bandwidth()
    bandwidth = max(measured.values())
    print(f"device: {jax.devices()[0].device_kind}, dtype {args.dtype}, {args.new_tokens} new tokens, prompt length "
          f"{args.prompt_length}; memory bandwidth: copy {measured['copy'] / 1e9:.1f} GB/s, XLA read "
          f"{measured['read'] / 1e9:.1f} GB/s; {load_average()}")
    if not args.no_peft:
        print(threads_line(torch_setup()[0]))
    rows = []
    for name in args.models.split(","):
        bench = JaxGeneration(name, args.prompt_length, args.dtype)
        for batch in (int(b) for b in args.batches.split(",")):
            inputs = texts(batch)
            produced = batch * args.new_tokens
            sides = bench.sides(inputs, args.new_tokens)
            theirs = None if args.no_peft else peft_side(name, inputs, args.prompt_length, args.new_tokens, args.dtype)
            if theirs is not None:
                sides["peft"] = theirs
            times = interleaved(sides, args.reps, warmup=1)  # every side once per round, in turn
            ours = {side: statistics.median(t) for side, t in times.items()}
            ours["decode_step"] = (ours["warm"] - ours["warm_one"]) / (args.new_tokens - 1)
            slots = len(inputs[0]) + args.new_tokens
            limit = bench.step_bytes(batch, args.prompt_length + slots) / bandwidth
            row = {"model": name, "batch": batch, "cold_tok_s": produced / ours["cold"],
                   "warm_tok_s": produced / ours["warm"], "decode_step_ms": 1e3 * ours["decode_step"],
                   "bandwidth_limit_ms": 1e3 * limit, "fraction_of_bandwidth": limit / ours["decode_step"]}
            line = (f"{name} batch {batch}: jaxprompt cold {row['cold_tok_s']:.1f}, warm {row['warm_tok_s']:.1f} new "
                    f"tok/s; decode step {row['decode_step_ms']:.1f} ms = {100 * row['fraction_of_bandwidth']:.0f}% "
                    f"of the bandwidth limit ({row['bandwidth_limit_ms']:.1f} ms)")
            if theirs is not None:
                (cold, clow, chigh), (warm, wlow, whigh) = (ratios(times["peft"], times[side]) for side in ("cold", "warm"))
                row.update(peft_tok_s=produced / ours["peft"], cold_ratio=cold, cold_ratio_range=[clow, chigh],
                           warm_ratio=warm, warm_ratio_range=[wlow, whigh])
                line += (f"; PEFT {row['peft_tok_s']:.1f} new tok/s; ratio cold {cold:.2f}x ({clow:.2f}-{chigh:.2f}), "
                         f"warm {warm:.2f}x ({wlow:.2f}-{whigh:.2f})")
            print(line, flush=True)
            rows.append(row)
        if args.profile:
            _, text_only = bench.batches(texts(8))
            with jax.profiler.trace(f"{args.profile}/{name}"):
                bench.warm(bench.frozen, bench.head_kv, text_only, new_tokens=args.new_tokens).block_until_ready()
    if args.json:
        with open(args.json, "w") as f:
            json.dump({"dtype": args.dtype, "bandwidth": bandwidth, "rows": rows}, f, indent=2)


if __name__ == "__main__":
    main()
