"""Shared fixtures: tiny random GPT-2/OPT models built offline with `transformers`."""

from __future__ import annotations

import os
import pathlib

import pytest

REPO = pathlib.Path(__file__).resolve().parents[1]
TOKENIZER_DIR = REPO / "checkpoints" / "tiny-gpt2-wordnet"


@pytest.fixture(scope="session", autouse=True)
def _compilation_cache(tmp_path_factory):
    """Tests rebuild the same steps as new closures; an on-disk XLA cache compiles each program once."""
    import jax

    jax.config.update("jax_compilation_cache_dir", str(tmp_path_factory.mktemp("xla-cache")))
    jax.config.update("jax_persistent_cache_min_compile_time_secs", 0.2)
    jax.config.update("jax_persistent_cache_min_entry_size_bytes", 0)


# name -> HF config kwargs. Large init std so logits are far from uniform and parity is meaningful.
TINY = {
    "gpt2": dict(model_type="gpt2", vocab_size=128, n_positions=64, n_embd=32, n_layer=2, n_head=4,
                 initializer_range=0.2, bos_token_id=0, eos_token_id=0),
    "gpt2-untied": dict(model_type="gpt2", vocab_size=128, n_positions=64, n_embd=32, n_layer=2, n_head=4,
                        initializer_range=0.2, bos_token_id=0, eos_token_id=0, tie_word_embeddings=False),
    "opt": dict(model_type="opt", vocab_size=128, max_position_embeddings=64, hidden_size=32, num_hidden_layers=2,
                num_attention_heads=4, ffn_dim=64, init_std=0.2),
    "opt-post-ln-proj": dict(model_type="opt", vocab_size=128, max_position_embeddings=64, hidden_size=32,
                             num_hidden_layers=2, num_attention_heads=4, ffn_dim=64, init_std=0.2,
                             word_embed_proj_dim=16, do_layer_norm_before=False),
    "opt-pre-ln-proj": dict(model_type="opt", vocab_size=128, max_position_embeddings=64, hidden_size=32,
                            num_hidden_layers=2, num_attention_heads=4, ffn_dim=64, init_std=0.2,
                            word_embed_proj_dim=16),
    # with GPT-2's vocabulary, for tests that tokenize real text (export, CLI)
    "gpt2-50k": dict(model_type="gpt2", vocab_size=50257, n_positions=96, n_embd=32, n_layer=2, n_head=4,
                     initializer_range=0.2),
    "opt-50k-proj": dict(model_type="opt", vocab_size=50272, max_position_embeddings=96, hidden_size=32,
                         num_hidden_layers=2, num_attention_heads=4, ffn_dim=64, init_std=0.2,
                         word_embed_proj_dim=16, bos_token_id=50256, eos_token_id=50256, pad_token_id=1),
}


def hf_config(name: str, **overrides):
    from transformers import GPT2Config, OPTConfig

    kw = {**TINY[name], **overrides}
    model_type = kw.pop("model_type")
    return (GPT2Config if model_type == "gpt2" else OPTConfig)(**kw)


def build_hf_model(name: str, directory, seed: int = 0, **overrides):
    """A tiny random `transformers` model saved to `directory`; returns the torch model (eval mode).
    Models with GPT-2's vocabulary get the GPT-2 tokenizer beside them."""
    import torch
    from transformers import AutoModelForCausalLM

    torch.manual_seed(seed)
    model = AutoModelForCausalLM.from_config(hf_config(name, **overrides)).eval()
    model.save_pretrained(directory)
    if model.config.vocab_size >= 50257:
        from jaxprompt.tokenizer import Tokenizer

        Tokenizer.load(str(TOKENIZER_DIR)).save(str(directory))
    return model


@pytest.fixture(scope="session")
def tiny_hf(tmp_path_factory):
    """name -> (torch model, checkpoint dir); built once per session."""
    pytest.importorskip("torch")
    cache = {}

    def get(name: str):
        if name not in cache:
            directory = tmp_path_factory.mktemp(name)
            cache[name] = (build_hf_model(name, directory), str(directory))
        return cache[name]

    return get


@pytest.fixture(scope="session")
def gpt2_tokenizer():
    from jaxprompt.tokenizer import Tokenizer

    return Tokenizer.load(str(TOKENIZER_DIR))


def pytest_configure(config):
    os.environ.setdefault("HF_HUB_OFFLINE", "1")
    os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")
    # the on-disk prompt cache of every Session.load (and CLI subprocess) goes to a temporary
    # directory: tests never write to the user's ~/.cache
    import tempfile

    os.environ["JAXPROMPT_CACHE"] = tempfile.mkdtemp(prefix="jaxprompt-test-cache-")


def pytest_unconfigure(config):
    import shutil

    shutil.rmtree(os.environ.get("JAXPROMPT_CACHE", ""), ignore_errors=True)


# ---- JAX-only tiny models with the real GPT-2 vocabulary (for training tests) -------------------

def tiny_config(model_type: str = "gpt2", **overrides):
    from jaxprompt.models.config import ModelConfig

    base = dict(vocab_size=50257, max_positions=96, d_model=32, n_layers=2, n_heads=4, d_ff=64, d_embed=32,
                eos_token_id=50256, bos_token_id=50256)
    if model_type == "opt":
        base.update(activation="relu", d_embed=16, pre_layer_norm=True)
    base.update(overrides)
    return ModelConfig(model_type=model_type, **base)


@pytest.fixture(scope="session")
def tiny_model_dir(tmp_path_factory):
    """A checkpoint directory (config.json, model.safetensors, tokenizer.json) of a tiny random GPT-2
    with GPT-2's vocabulary, written by jaxprompt itself (no torch needed)."""
    import jax

    from jaxprompt.models import Model
    from jaxprompt.models.convert import save_pretrained
    from jaxprompt.tokenizer import Tokenizer

    directory = tmp_path_factory.mktemp("tiny-model")
    model = Model(tiny_config())
    save_pretrained(model.config, model.init(jax.random.key(0), std=0.2), str(directory))
    Tokenizer.load(str(TOKENIZER_DIR)).save(str(directory))
    return str(directory)


@pytest.fixture(scope="session")
def tiny_lm():
    """(Model, params) of a tiny random GPT-2 with GPT-2's 50257-token vocabulary."""
    import jax

    from jaxprompt.models import Model

    model = Model(tiny_config())
    return model, model.init(jax.random.key(0), std=0.2)


def write_task(directory, rows, template="Here are two {prompt} {word1} and", target=" {word2}", name="t",
               **keys) -> str:
    """A task file (TOML) over a JSONL of `rows` in `directory`; returns its path."""
    import json

    directory = pathlib.Path(directory)
    data = directory / f"{name}.jsonl"
    data.write_text("".join(json.dumps(r) + "\n" for r in rows))
    lines = [f"name = {json.dumps(name)}", f"template = {json.dumps(template)}", f"target = {json.dumps(target)}",
             f"data = {json.dumps(str(data))}"]
    lines += [f"{k} = {json.dumps(v)}" for k, v in keys.items()]
    path = directory / f"{name}.toml"
    path.write_text("\n".join(lines) + "\n")
    return str(path)


def snapshot(directory) -> dict:
    """Every file under `directory` with its bytes and modification time: a run "untouched" is equal."""
    out = {}
    for root, _, files in os.walk(directory):
        for name in files:
            path = os.path.join(root, name)
            with open(path, "rb") as f:
                out[os.path.relpath(path, directory)] = (f.read(), os.stat(path).st_mtime_ns)
    return out


ANTONYM_PAIRS = [("hot", "cold"), ("good", "bad"), ("big", "small"), ("up", "down"), ("left", "right"),
                 ("in", "out"), ("yes", "no"), ("day", "night"), ("fast", "slow"), ("old", "new"),
                 ("high", "low"), ("early", "late"), ("rich", "poor"), ("hard", "soft"), ("wet", "dry"),
                 ("open", "closed")]
