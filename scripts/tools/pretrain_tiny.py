"""Pretrain the embedded default model: a small GPT-2 on WordNet English, with the real GPT-2 tokenizer.

Full-parameter training with jaxprompt's own GPT-2 module and the same step / pmap machinery as
prompt tuning (here `params` is the whole LM and nothing is frozen). Reproducible from --seed.
Writes an HF-format checkpoint (config.json, model.safetensors in bf16, tokenizer.json) that
`transformers.AutoModelForCausalLM` also loads, the held-out antonym pairs (heldout_pairs.tsv:
never in the corpus, see scripts/tools/corpus.py), the held-out synsets' gloss-like sentences
(heldout_gloss.txt), and pretraining.json with what was measured:
the LM loss, the loss on gloss-like sentences of held-out synsets, and an antonym probe on pairs
seen and unseen in pretraining.

    python scripts/tools/pretrain_tiny.py --out checkpoints/tiny-gpt2-wordnet      # ~95 minutes on 2 CPU cores (1,500 steps)

Every `--save-every` steps the whole training state (weights, optimizer moments, step, the curve so
far) is written atomically to `--work` (default `<out>.work/`); `--resume` continues from it and
gives the same weights as an uninterrupted run (the data stream is replayed from the seed up to
the saved step).
"""

from __future__ import annotations

import argparse
import json
import math
import os
import random
import sys
import time
from functools import partial

import flax.serialization
import jax
import jax.numpy as jnp
import numpy as np
import optax
from corpus import (
    HELDOUT_PAIR_FRACTION,
    HELDOUT_PAIRS_FILE,
    HELDOUT_SYNSET_FRACTION,
    heldout_gloss_sentences,
    heldout_pairs,
    sentences,
    write_heldout_pairs,
)
from tqdm import tqdm
from wordnet import DEFAULT_DIR, antonym_pairs, read_synsets

from jaxprompt.data.tokenizer import Tokenizer
from jaxprompt.models import Model
from jaxprompt.models.convert import save_pretrained
from jaxprompt.models.model_config import ModelConfig
from jaxprompt.parallel.strategies import DataParallel
from jaxprompt.training.step import TrainState

REPO = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
PROBE_PHRASE = "The opposite of {a} is"  # a corpus phrasing; the probe asks for the first token of " {b}"



def nll_sum(logits, targets, weights):
    """Sum of weighted next-token negative log-likelihoods (float32), and the sum of weights."""
    logp = jax.nn.log_softmax(logits.astype(jnp.float32), axis=-1)
    nll = -jnp.take_along_axis(logp, targets[..., None], axis=-1)[..., 0]
    return jnp.sum(nll * weights), jnp.sum(weights.astype(jnp.float32))

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


def save_progress(path: str, state, curve: list, seconds: float) -> None:
    """The training state and what was measured so far, written atomically (write, then rename)."""
    state = state.replace(rng=jax.random.key_data(state.rng))  # typed keys do not serialise
    blob = flax.serialization.to_bytes({"state": state, "seconds": seconds})
    os.makedirs(os.path.dirname(path), exist_ok=True)
    with open(path + ".tmp", "wb") as f:
        f.write(blob)
    with open(path + ".curve.tmp", "w") as f:
        json.dump(curve, f)
    os.replace(path + ".curve.tmp", path + ".curve.json")
    os.replace(path + ".tmp", path)


def load_progress(path: str, state_template) -> tuple[object, list, float]:
    with open(path, "rb") as f:
        template = state_template.replace(rng=jax.random.key_data(state_template.rng))
        restored = flax.serialization.from_bytes({"state": template, "seconds": 0.0}, f.read())
    state = restored["state"]
    state = state.replace(rng=jax.random.wrap_key_data(jnp.asarray(state.rng)))
    with open(path + ".curve.json") as f:
        curve = [p for p in json.load(f) if p["step"] <= int(state.step)]
    return state, curve, float(restored["seconds"])


def _padded(rows: list[list[int]], length: int, pad: int) -> tuple[np.ndarray, np.ndarray]:
    tokens = np.full((len(rows), length), pad, np.int32)
    mask = np.zeros((len(rows), length), bool)
    for i, r in enumerate(rows):
        tokens[i, :len(r)], mask[i, :len(r)] = r, True
    return tokens, mask


@partial(jax.jit, static_argnames="model")
def _sentence_nll(model: Model, params, tokens, mask):
    logits = model.logits(params, tokens, mask)
    return nll_sum(logits[:, :-1], tokens[:, 1:], mask[:, 1:])


def sentence_loss(model: Model, params, tokenizer: Tokenizer, texts: list[str], batch: int = 64) -> float:
    """Mean per-token NLL (nats) of `texts`, each read after an EOS as in pretraining, pooled over tokens."""
    eos, limit = tokenizer.eos_token_id, model.config.max_positions
    rows = sorted((([eos] + ids)[:limit] for ids in tokenizer.encode_batch(texts)), key=len)
    total = count = 0.0
    for start in range(0, len(rows), batch):
        chunk = rows[start:start + batch]
        length = min(limit, 32 * math.ceil(len(chunk[-1]) / 32))  # few shapes, few compilations
        s, c = _sentence_nll(model, params, *map(jnp.asarray, _padded(chunk + [[eos]] * (batch - len(chunk)),
                                                                       length, eos)))
        total, count = total + float(s), count + float(c)
    return total / count


@partial(jax.jit, static_argnames="model")
def _next_token_ranks(model: Model, params, tokens, mask, targets):
    logits = model.logits(params, tokens, mask)
    last = jnp.take_along_axis(logits, (mask.sum(1) - 1)[:, None, None], axis=1)[:, 0]  # [B, V]
    target = jnp.take_along_axis(last, targets[:, None], axis=1)
    return jnp.sum(last > target, axis=1)


def first_token_ranks(model: Model, params, tokenizer: Tokenizer, prefixes: list[str], targets: list[str],
                      batch: int = 64) -> np.ndarray:
    """Rank of each target's first token among the model's next-token logits after its prefix
    (0: the model's top choice). Prefixes are read as the prompt task reads inputs: no EOS before."""
    ids = tokenizer.encode_batch(prefixes)
    firsts = [t[0] for t in tokenizer.encode_batch(targets)]
    length = max(len(i) for i in ids)
    ranks = []
    for start in range(0, len(ids), batch):
        chunk, first = ids[start:start + batch], firsts[start:start + batch]
        n = len(chunk)
        tokens, mask = _padded(chunk + [chunk[0]] * (batch - n), length, tokenizer.eos_token_id)
        targets_arr = np.asarray(first + [first[0]] * (batch - n), np.int32)
        ranks.append(np.asarray(_next_token_ranks(model, params, tokens, mask, targets_arr))[:n])
    return np.concatenate(ranks)


def antonym_probe(model: Model, params, tokenizer: Tokenizer, pairs: list[tuple[str, str]]) -> dict:
    """Top-1 / top-10 of the first token of b after "The opposite of a is", over `pairs`."""
    ranks = first_token_ranks(model, params, tokenizer, [PROBE_PHRASE.format(a=a) for a, _ in pairs],
                              [" " + b for _, b in pairs])
    return {"pairs": len(pairs), "top1": round(float(np.mean(ranks < 1)), 4), "top10": round(float(np.mean(ranks < 10)), 4)}


def measure(model: Model, params, tokenizer: Tokenizer, gloss: list[str], seen: list, unseen: list) -> dict:
    return {"heldout_gloss_loss": round(sentence_loss(model, params, tokenizer, gloss), 4),
            "probe_seen": antonym_probe(model, params, tokenizer, seen),
            "probe_unseen": antonym_probe(model, params, tokenizer, unseen)}


def write_heldout(directory: str, pairs: list[tuple[str, str]], gloss: list[str]) -> None:
    """What the corpus left out, beside the checkpoint: the antonym pairs, and the gloss-like
    sentences that measure plain English."""
    write_heldout_pairs(directory, pairs)
    with open(os.path.join(directory, "heldout_gloss.txt"), "w") as f:
        f.writelines(s + "\n" for s in gloss)


def main(argv=None):
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--out", default=os.path.join(REPO, "checkpoints", "tiny-gpt2-wordnet"))
    p.add_argument("--tokenizer", default=os.path.join(REPO, "checkpoints", "tiny-gpt2-wordnet"),
                   help="directory with the GPT-2 tokenizer.json")
    p.add_argument("--wordnet", default=DEFAULT_DIR)
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--steps", type=int, default=1500)
    p.add_argument("--batch", type=int, default=16)
    p.add_argument("--seq-len", type=int, default=128)
    p.add_argument("--d-model", type=int, default=256)
    p.add_argument("--layers", type=int, default=6)
    p.add_argument("--heads", type=int, default=8)
    p.add_argument("--lr", type=float, default=3e-3)
    p.add_argument("--warmup", type=int, default=50)
    p.add_argument("--decay", type=float, default=0.26, help="share of the steps over which the rate decays to lr/20")
    p.add_argument("--decay-other-fraction", type=float, default=0.5,
                   help="--other-fraction while the rate decays")
    p.add_argument("--other-fraction", type=float, default=0.05,
                   help="fraction of synsets whose gloss/example/synonym/hypernym sentences join each epoch")
    p.add_argument("--antonym-repeats", type=int, default=8, help="phrasings of every antonym pair per epoch")
    p.add_argument("--eval-every", type=int, default=500,
                   help="steps between measurements of the held-out gloss loss and the antonym probe")
    p.add_argument("--save-every", type=int, default=100, help="steps between saves of the training state")
    p.add_argument("--work", default=None, help="where the training state is saved (default: <out>.work)")
    p.add_argument("--resume", action="store_true", help="continue from the state saved in --work")
    args = p.parse_args(argv)

    tokenizer = Tokenizer.load(args.tokenizer)
    config = ModelConfig(
        model_type="gpt2", vocab_size=tokenizer.vocab_size, max_positions=args.seq_len, d_model=args.d_model,
        n_layers=args.layers, n_heads=args.heads, d_ff=4 * args.d_model, d_embed=args.d_model,
        bos_token_id=tokenizer.eos_token_id, eos_token_id=tokenizer.eos_token_id,
    )
    model = Model(config)
    synsets = read_synsets(args.wordnet)
    decay_start = args.steps - max(1, round(args.decay * args.steps))
    # two mixes: antonym-heavy while the rate is constant, then plain English takes the larger share
    # during the decay (MiniCPM's decay-phase data mixing, Hu et al. 2024): the antonym facts are
    # learnt early and kept, and the held-out gloss loss falls where the rate anneals
    stable_rows = packed_rows(synsets, tokenizer, args.seed, args.seq_len, args.other_fraction, args.antonym_repeats)
    decay_rows = packed_rows(synsets, tokenizer, args.seed + 1, args.seq_len, args.decay_other_fraction,
                             args.antonym_repeats)

    def rows_for(step: int):
        return stable_rows if step < decay_start else decay_rows
    unseen = heldout_pairs(synsets)
    held = set(unseen)
    seen = random.Random(0).sample([q for q in antonym_pairs(synsets) if q not in held], len(unseen))
    gloss = heldout_gloss_sentences(synsets)

    def lm_loss(params, _frozen, batch, _rng, _step):
        tokens = batch["tokens"]
        logits = model.logits(params, tokens[:, :-1])
        return nll_sum(logits, tokens[:, 1:], jnp.ones(tokens[:, 1:].shape))

    # warmup, constant, then a linear decay over the last `--decay` share of the steps (the
    # warmup-stable-decay schedule of MiniCPM, Hu et al. 2024): until the decay starts the rate does
    # not depend on --steps, so a run can be resumed with another length and equal a fresh one
    decay_steps = args.steps - decay_start
    schedule = optax.join_schedules(
        [optax.linear_schedule(0.0, args.lr, args.warmup), optax.constant_schedule(args.lr),
         optax.linear_schedule(args.lr, args.lr / 20, decay_steps)],
        [args.warmup, args.steps - decay_steps])
    optimizer = optax.chain(optax.clip_by_global_norm(1.0),
                            optax.adamw(schedule, b1=0.9, b2=0.98, weight_decay=0.01))
    dp = DataParallel()
    key = jax.random.key(args.seed)
    state = TrainState.create(model.init(key), optimizer, key)
    progress = os.path.join(args.work or args.out.rstrip("/") + ".work", "state.msgpack")
    curve, done_seconds = [], 0.0
    if args.resume and os.path.exists(progress):
        state, curve, done_seconds = load_progress(progress, state)
        print(f"resuming at step {int(state.step)} from {progress}", file=sys.stderr)
    elif args.resume:
        print(f"nothing to resume at {progress}: starting at step 0", file=sys.stderr)
    first = int(state.step)
    for step in range(first):  # replay the data streams up to the saved step
        for _ in range(args.batch):
            next(rows_for(step))
    state = dp.replicate(state)
    step_fn = dp.train_step(lm_loss, optimizer)
    frozen = dp.put_frozen(jnp.zeros(()))
    n_params = model.num_params()
    print(f"model: {n_params / 1e6:.1f}M params, {config.n_layers} layers, d_model {config.d_model}; "
          f"{dp.n} device(s); {len(unseen)} held-out antonym pairs, {len(gloss)} held-out gloss sentences",
          file=sys.stderr)

    session_start = time.time()
    start, eval_seconds, recent = session_start - done_seconds, 0.0, []
    bar = tqdm(range(first, args.steps), desc="pretrain", file=sys.stderr, mininterval=5,
               initial=first, total=args.steps)
    for step in bar:
        batch = np.array([next(rows_for(step)) for _ in range(args.batch)], np.int32)
        state, metrics = step_fn(state, frozen, dp.shard({"tokens": batch}))
        if step % 20 == 0 or step == args.steps - 1:
            loss = float(metrics["loss"][0])
            if not math.isfinite(loss):
                raise FloatingPointError(f"pretraining loss is {loss} at step {step}")
            recent = (recent + [loss])[-10:]
            tokens_seen = (step + 1 - first) * args.batch * args.seq_len
            bar.set_postfix(loss=f"{loss:.3f}", tok_s=f"{tokens_seen / (time.time() - session_start - eval_seconds):.0f}")
        if args.eval_every and (step + 1) % args.eval_every == 0 and step + 1 < args.steps:
            t0 = time.time()
            point = {"step": step + 1, "lm_loss": round(float(np.mean(recent)), 4),
                     **measure(model, dp.unreplicate(state).params, tokenizer, gloss, seen, unseen)}
            curve.append(point)
            eval_seconds += time.time() - t0
            tqdm.write(json.dumps(point), file=sys.stderr)
        if args.save_every and (step + 1) % args.save_every == 0 and step + 1 < args.steps:
            save_progress(progress, dp.unreplicate(state), curve, time.time() - start - eval_seconds)
    elapsed = time.time() - start - eval_seconds

    params = dp.unreplicate(state).params
    save_pretrained(config, params, args.out, dtype=jnp.bfloat16)
    if os.path.abspath(args.tokenizer) != os.path.abspath(args.out):
        tokenizer.save(args.out)
    write_heldout(args.out, unseen, gloss)
    # measured on the saved (bf16) weights, as every user of the checkpoint sees them
    from jaxprompt.models.loading import load_pretrained

    _, saved = load_pretrained(args.out)
    report = {
        "seed": args.seed, "steps": args.steps, "batch": args.batch, "seq_len": args.seq_len,
        "tokens": args.steps * args.batch * args.seq_len, "seconds": round(elapsed, 1),
        "final_lm_loss": round(float(np.mean(recent)), 4), "params": n_params, "lr": args.lr,
        "warmup": args.warmup, "decay": args.decay, "schedule": "warmup-stable-decay", "devices": [str(d) for d in dp.devices], "other_fraction": args.other_fraction,
        "decay_other_fraction": args.decay_other_fraction,
        "antonym_repeats": args.antonym_repeats,
        "heldout_pair_fraction": HELDOUT_PAIR_FRACTION, "heldout_pairs": len(unseen),
        "heldout_pairs_file": HELDOUT_PAIRS_FILE, "heldout_synset_fraction": HELDOUT_SYNSET_FRACTION,
        "heldout_gloss_sentences": len(gloss), "heldout_gloss_file": "heldout_gloss.txt", **measure(model, saved, tokenizer, gloss, seen, unseen),
        "probe_phrase": PROBE_PHRASE, "curve": curve,
    }
    with open(os.path.join(args.out, "pretraining.json"), "w") as f:
        json.dump(report, f, indent=2)
    print(json.dumps(report), file=sys.stderr)


if __name__ == "__main__":
    main()
