"""Pretrain the embedded default model: a small GPT-2 on WordNet English, with the real GPT-2 tokenizer.

Full-parameter training with jaxprompt's own GPT-2 module and the same step / pmap machinery as
prompt tuning (here `params` is the whole LM and nothing is frozen). Reproducible from --seed.
Writes an HF-format checkpoint (config.json, model.safetensors in bf16, tokenizer.json) that
`transformers.AutoModelForCausalLM` also loads, plus pretraining.json with what was measured.

    python scripts/pretrain_tiny.py --out checkpoints/tiny-gpt2-wordnet      # ~1 hour on 2 CPU cores
"""

from __future__ import annotations

import argparse
import json
import math
import os
import sys
import time

import jax
import jax.numpy as jnp
import numpy as np
import optax
from tqdm import tqdm

from jaxprompt.models.config import ModelConfig
from jaxprompt.corpus import sentences
from jaxprompt.loss import nll_sum
from jaxprompt.models import Model
from jaxprompt.models.convert import save_pretrained
from jaxprompt.parallel import DataParallel
from jaxprompt.tokenizer import Tokenizer
from jaxprompt.train import TrainState
from jaxprompt.wordnet import DEFAULT_DIR, read_synsets

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


def packed_rows(synsets, tokenizer: Tokenizer, seed: int, seq_len: int, other_fraction: float, antonym_repeats: int):
    """Endless rows of seq_len + 1 tokens: corpus sentences joined by EOS, epoch after epoch."""
    epoch = 0
    buffer: list[int] = []
    while True:
        # all antonym facts, a fresh random part of the rest each epoch
        text = list(sentences(synsets, seed * 1000 + epoch, antonym_repeats, other_fraction))
        for ids in tokenizer.encode_batch(text):
            buffer.extend(ids)
            buffer.append(tokenizer.eos_token_id)
            while len(buffer) >= seq_len + 1:
                yield buffer[: seq_len + 1]
                buffer = buffer[seq_len + 1:]
        epoch += 1


def main(argv=None):
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--out", default=os.path.join(REPO, "checkpoints", "tiny-gpt2-wordnet"))
    p.add_argument("--tokenizer", default=os.path.join(REPO, "checkpoints", "tiny-gpt2-wordnet"),
                   help="directory with the GPT-2 tokenizer.json")
    p.add_argument("--wordnet", default=DEFAULT_DIR)
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--steps", type=int, default=1200)
    p.add_argument("--batch", type=int, default=16)
    p.add_argument("--seq-len", type=int, default=128)
    p.add_argument("--d-model", type=int, default=256)
    p.add_argument("--layers", type=int, default=6)
    p.add_argument("--heads", type=int, default=8)
    p.add_argument("--lr", type=float, default=3e-3)
    p.add_argument("--warmup", type=int, default=100)
    p.add_argument("--other-fraction", type=float, default=0.03,
                   help="fraction of synsets whose gloss/example/synonym/hypernym sentences join each epoch")
    p.add_argument("--antonym-repeats", type=int, default=8, help="phrasings of every antonym pair per epoch")
    args = p.parse_args(argv)

    tokenizer = Tokenizer.load(args.tokenizer)
    config = ModelConfig(
        model_type="gpt2", vocab_size=tokenizer.vocab_size, max_positions=args.seq_len, d_model=args.d_model,
        n_layers=args.layers, n_heads=args.heads, d_ff=4 * args.d_model, d_embed=args.d_model,
        bos_token_id=tokenizer.eos_token_id, eos_token_id=tokenizer.eos_token_id,
    )
    model = Model(config)
    synsets = read_synsets(args.wordnet)
    rows = packed_rows(synsets, tokenizer, args.seed, args.seq_len, args.other_fraction, args.antonym_repeats)

    def lm_loss(params, _frozen, batch, _rng, _step):
        tokens = batch["tokens"]
        logits = model.logits(params, tokens[:, :-1])
        return nll_sum(logits, tokens[:, 1:], jnp.ones(tokens[:, 1:].shape))

    schedule = optax.warmup_cosine_decay_schedule(0.0, args.lr, args.warmup, args.steps, end_value=args.lr / 20)
    optimizer = optax.chain(optax.clip_by_global_norm(1.0),
                            optax.adamw(schedule, b1=0.9, b2=0.98, weight_decay=0.01))
    dp = DataParallel()
    key = jax.random.key(args.seed)
    state = dp.replicate(TrainState.create(model.init(key), optimizer, key))
    step_fn = dp.train_step(lm_loss, optimizer)
    frozen = dp.replicate(jnp.zeros(()))
    n_params = model.num_params()
    print(f"model: {n_params / 1e6:.1f}M params, {config.n_layers} layers, d_model {config.d_model}; "
          f"{dp.n} device(s)", file=sys.stderr)

    start, tokens_seen, recent = time.time(), 0, []
    bar = tqdm(range(args.steps), desc="pretrain", file=sys.stderr, mininterval=5)
    for step in bar:
        batch = np.array([next(rows) for _ in range(args.batch)], np.int32)
        state, metrics = step_fn(state, frozen, dp.shard({"tokens": batch}))
        if step % 20 == 0 or step == args.steps - 1:
            loss = float(metrics["loss"][0])
            if not math.isfinite(loss):
                raise FloatingPointError(f"pretraining loss is {loss} at step {step}")
            recent = (recent + [loss])[-10:]
            tokens_seen = (step + 1) * args.batch * args.seq_len
            bar.set_postfix(loss=f"{loss:.3f}", tok_s=f"{tokens_seen / (time.time() - start):.0f}")
    elapsed = time.time() - start

    params = dp.unreplicate(state).params
    save_pretrained(config, params, args.out, dtype=jnp.bfloat16)
    if os.path.abspath(args.tokenizer) != os.path.abspath(args.out):
        tokenizer.save(args.out)
    report = {
        "seed": args.seed, "steps": args.steps, "batch": args.batch, "seq_len": args.seq_len,
        "tokens": args.steps * args.batch * args.seq_len, "seconds": round(elapsed, 1),
        "final_lm_loss": round(float(np.mean(recent)), 4), "params": n_params, "lr": args.lr,
        "devices": [str(d) for d in dp.devices], "other_fraction": args.other_fraction,
        "antonym_repeats": args.antonym_repeats,
    }
    with open(os.path.join(args.out, "pretraining.json"), "w") as f:
        json.dump(report, f, indent=2)
    print(json.dumps(report), file=sys.stderr)


if __name__ == "__main__":
    main()
