"""How far quantized weights move a model's output, per scheme: the logits of the float32 model
against the same model with its layers' matmul weights quantized (int8 per channel; int4 and NF4
in groups of 64 and 128), on the embedded model (trained: antonym prompts from the task's test
rows) and on a tiny random Llama (normal weights at Llama's initializer_range 0.02; random tokens).

    python scripts/experiments/quantization_error.py [--rows 64] [--json FILE]

Per scheme and model: the quantized kernels' RMS error over their own RMS, the logits' RMS error
over their own RMS, the mean KL divergence of the quantized model's next-token distribution from
the float32 one (nats per token), and how often both pick the same next token.
docs/quantization.md chose `--quantize int4` from this table.
"""
from __future__ import annotations

import argparse
import json

import jax
import jax.numpy as jnp
import numpy as np

from jaxprompt.data.tasks import BUILTIN
from jaxprompt.data.tokenizer import Tokenizer
from jaxprompt.models import Model, config_from_hf, load_pretrained
from jaxprompt.models.layers.quantized import dequantize, is_quantized
from jaxprompt.models.quantize import SCHEMES, Scheme, quantize_params
from jaxprompt.paths import DEFAULT_MODEL

COMPARED = {"int8": Scheme("int8"), "int4-g64": Scheme("int4", 64), "int4-g128": Scheme("int4", 128),
            "nf4-g64": Scheme("nf4", 64), "nf4-g128": Scheme("nf4", 128)}
# a tiny Llama whose widths every group size tiles (random: its logits are near uniform, so its top-1
# agreement is noisy; the RMS error and KL divergence compare the schemes)
TINY_LLAMA = dict(model_type="llama", vocab_size=1024, max_position_embeddings=128, hidden_size=256,
                  intermediate_size=512, num_hidden_layers=2, num_attention_heads=4, num_key_value_heads=2,
                  tie_word_embeddings=False, bos_token_id=1, eos_token_id=2)


def embedded_inputs(rows: int) -> tuple[Model, dict, np.ndarray, np.ndarray]:
    config, params = load_pretrained(DEFAULT_MODEL)
    tokenizer = Tokenizer.load(DEFAULT_MODEL)
    task = BUILTIN["antonyms"]
    texts = [task.template.render_hard(r, task.hard_prompt) + task.template.render_target(r)
             for r in task.load(seed=0)["test"][:rows]]
    ids = [tokenizer.encode(t) for t in texts]
    T = max(map(len, ids))
    tokens = np.array([i + [0] * (T - len(i)) for i in ids], np.int32)
    mask = np.array([[1] * len(i) + [0] * (T - len(i)) for i in ids], bool)
    return Model(config), params, tokens, mask


def tiny_llama_inputs(rows: int) -> tuple[Model, dict, np.ndarray, np.ndarray]:
    model = Model(config_from_hf(TINY_LLAMA))
    params = model.init(jax.random.key(0), std=0.02)
    tokens = np.random.default_rng(0).integers(3, model.config.vocab_size, (rows, 32)).astype(np.int32)
    return model, params, tokens, np.ones(tokens.shape, bool)


def compare(model: Model, params: dict, tokens: np.ndarray, mask: np.ndarray) -> dict[str, dict[str, float]]:
    logits = jax.jit(model.logits)
    ref = np.asarray(logits(params, jnp.asarray(tokens), jnp.asarray(mask)), np.float64)[mask]
    log_p = ref - np.logaddexp.reduce(ref, axis=-1, keepdims=True)
    out = {}
    for name, scheme in COMPARED.items():
        quantized = quantize_params(model.config, params, scheme)
        pairs = [(np.asarray(dequantize(q, jnp.float32), np.float64), np.asarray(w, np.float64)) for q, w in zip(
            jax.tree.leaves(quantized, is_leaf=is_quantized), jax.tree.leaves(params)) if is_quantized(q)]
        got = np.asarray(logits(quantized, jnp.asarray(tokens), jnp.asarray(mask)), np.float64)[mask]
        log_q = got - np.logaddexp.reduce(got, axis=-1, keepdims=True)
        out[name] = {"kernels: relative RMS error": float(np.sqrt(sum(np.sum((a - b) ** 2) for a, b in pairs)
                                                                  / sum(np.sum(b ** 2) for _, b in pairs))),
                     "logits: relative RMS error": float(np.sqrt(np.mean((got - ref) ** 2) / np.mean(ref ** 2))),
                     "KL (nats/token)": float(np.mean(np.sum(np.exp(log_p) * (log_p - log_q), axis=-1))),
                     "top-1 agreement": float(np.mean(got.argmax(-1) == ref.argmax(-1)))}
    return out


def table(results: dict[str, dict[str, dict[str, float]]]) -> str:
    metrics = list(next(iter(next(iter(results.values())).values())))
    header = ["model", "scheme", *metrics]
    rows = [[model, scheme + (" (--quantize " + next(k for k, v in SCHEMES.items() if v == COMPARED[scheme]) + ")"
                              if COMPARED[scheme] in SCHEMES.values() else ""),
             *(f"{values[m]:.2e}" if "RMS" in m or m.startswith("KL") else f"{100 * values[m]:.1f}%" for m in metrics)]
            for model, per in results.items() for scheme, values in per.items()]
    line = lambda cells: "| " + " | ".join(cells) + " |"
    return "\n".join([line(header), line(["---"] * len(header)), *map(line, rows)])


def main(argv=None):
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--rows", type=int, default=64, help="test rows (embedded) and random sequences (tiny Llama)")
    p.add_argument("--json", default=None, help="also write the figures here")
    args = p.parse_args(argv)
    results = {"embedded tiny-gpt2-wordnet": compare(*embedded_inputs(args.rows)),
               "tiny random Llama": compare(*tiny_llama_inputs(args.rows))}
    print(table(results))
    if args.json:
        with open(args.json, "w") as f:
            json.dump(results, f, indent=2)


if __name__ == "__main__":
    main()
