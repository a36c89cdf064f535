"""Greedy tokens of the embedded model through `jaxprompt generate` and evaluation's generation,
recorded before the inference engine replaced their two decoding pipelines (tests/data/
generate_pins.json; test_inference.py checks the engine still produces them).

Record (only with the code the pins are meant to hold): `python tests/pin_generate.py RECORD_DIR`.
"""

from __future__ import annotations

import contextlib
import hashlib
import io
import json
import os
import sys

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
MODEL = os.path.join(REPO, "checkpoints", "tiny-gpt2-wordnet")
PINS = os.path.join(REPO, "tests", "data", "generate_pins.json")
# two methods: virtual tokens in the input (soft) and keys/values before it (prefix, initialised
# from the written prompt's tokens: random-token inits changed with the engine, in issue 23's
# tokenizer-aware sampling, and the pins hold decoding, not initialisation)
RUNS = {"soft": ["--method", "soft", "--prompt-length", "3"],
        "prefix": ["--method", "prefix", "--prompt-length", "2", "--init", "text"]}
TRAIN = ["--steps", "3", "--batch-size", "8", "--eval-examples", "8", "--eval-every", "3", "--no-progress",
         "--lr", "0.05", "--no-baseline"]
INPUTS = ["hot", "good", "early", "word1=fast", "transparent"]
NEW_TOKENS = 4


def model_sha() -> str:
    with open(os.path.join(MODEL, "model.safetensors"), "rb") as f:
        return hashlib.sha256(f.read()).hexdigest()


def train_runs(directory: str) -> dict[str, str]:
    from jaxprompt.cli import main

    runs = {}
    for name, flags in RUNS.items():
        runs[name] = os.path.join(directory, name)
        if not os.path.isdir(runs[name]):
            assert main(["train", "--model", MODEL, "--out", runs[name], *TRAIN, *flags]) == 0
    return runs


def cli_generate(run: str) -> list[str]:
    from jaxprompt.cli import main

    out = io.StringIO()
    args = ["generate", run, "--max-new-tokens", str(NEW_TOKENS)]
    for text in INPUTS:
        args += ["--text", text]
    with contextlib.redirect_stdout(out):
        assert main(args) == 0
    return out.getvalue().splitlines()


def eval_generate(run: str) -> list[str]:
    from jaxprompt.evaluate import generate_texts
    from jaxprompt.run import load_run

    session, prompt, _ = load_run(run, cache=False)
    rows = [{"word1": t.split("=")[-1], "word2": ""} for t in INPUTS]
    return generate_texts(session, prompt, rows, max_new_tokens=NEW_TOKENS, batch_size=4)


def outputs(directory: str) -> dict:
    runs = train_runs(directory)
    return {name: {"generate": cli_generate(run), "evaluate": eval_generate(run)} for name, run in runs.items()}


if __name__ == "__main__":
    pins = {"model_sha256": model_sha(), "inputs": INPUTS, "new_tokens": NEW_TOKENS, "outputs": outputs(sys.argv[1])}
    with open(PINS, "w") as f:
        json.dump(pins, f, indent=1)
    print(json.dumps(pins["outputs"], indent=1))
