"""Sessions: loading by HF id from a Hugging Face cache, damaged checkpoint files named, the weights'
fingerprint, and positions checked as sequences are encoded."""

from __future__ import annotations

import dataclasses
import os
import shutil
import subprocess
import sys
import textwrap

import jax
import numpy as np
import pytest

from jaxprompt.data.tasks import BUILTIN
from jaxprompt.data.templates import TemplateError
from jaxprompt.data.tokenizer import TokenizerError
from jaxprompt.models.model_config import ConfigError
from jaxprompt.prompts import METHODS
from jaxprompt.session import Session

HF_CACHE_SCRIPT = textwrap.dedent("""
    import sys, jax, numpy as np
    from jaxprompt.models.loading import load_pretrained, resolve
    from jaxprompt.prompts import METHODS
    from jaxprompt.session import Session
    from jaxprompt.data.tasks import BUILTIN
    directory = resolve("jaxprompt-test/tiny-gpt2")
    assert directory.startswith(sys.argv[1]) and "snapshots" in directory, directory
    session = Session.load("jaxprompt-test/tiny-gpt2", BUILTIN["antonyms"], METHODS["soft"](length=2))
    _, reference = load_pretrained(sys.argv[2])
    jax.tree.map(np.testing.assert_array_equal, session.frozen, reference)
    print("OK", session.tokenizer.encode(" hot"))
""")


def test_a_model_id_loads_from_a_hugging_face_cache(tiny_model_dir, tmp_path):
    """The HF cache layout (models--org--name/snapshots/<hash>/, refs/main) under HF_HOME, offline."""
    home = tmp_path / "hf-home"
    repo = home / "hub" / "models--jaxprompt-test--tiny-gpt2"
    snapshot = repo / "snapshots" / ("0" * 40)
    shutil.copytree(tiny_model_dir, snapshot)
    (repo / "refs").mkdir()
    (repo / "refs" / "main").write_text("0" * 40)
    env = {**os.environ, "HF_HOME": str(home), "HF_HUB_OFFLINE": "1"}
    env.pop("HF_HUB_CACHE", None)
    proc = subprocess.run([sys.executable, "-c", HF_CACHE_SCRIPT, str(home), tiny_model_dir], env=env,
                          capture_output=True, text=True, timeout=300)
    assert proc.returncode == 0 and "OK [3024]" in proc.stdout, proc.stdout + proc.stderr[-2000:]


@pytest.mark.parametrize("name,content,error,message", [
    ("config.json", "{not json", ConfigError, "config.json is not valid JSON"),
    ("tokenizer.json", "{not json", TokenizerError, "cannot read .*tokenizer.json"),
])
def test_an_unreadable_checkpoint_file_is_named(tiny_model_dir, tmp_path, name, content, error, message):
    directory = tmp_path / "model"
    shutil.copytree(tiny_model_dir, directory)
    (directory / name).write_text(content)
    with pytest.raises(error, match=message) as info:
        Session.load(str(directory), BUILTIN["antonyms"], METHODS["soft"](length=2), cache=False)
    assert str(directory) in str(info.value) and "\n" not in str(info.value)


def test_the_fingerprint_covers_every_weight(tiny_lm, gpt2_tokenizer):
    model, frozen = tiny_lm
    session = Session(model, frozen, gpt2_tokenizer, BUILTIN["antonyms"], METHODS["soft"](length=2))
    edited = jax.tree.map(np.array, frozen)
    edited["wte"]["embedding"][40_001, 7] += 1e-3  # one value of 1.6M, far from any strided sample
    other = Session(model, edited, gpt2_tokenizer, BUILTIN["antonyms"], METHODS["soft"](length=2))
    same = Session(model, jax.tree.map(np.array, frozen), gpt2_tokenizer, BUILTIN["antonyms"],
                   METHODS["soft"](length=2))
    assert session.fingerprint() != other.fingerprint() and session.fingerprint() == same.fingerprint()


def test_encode_refuses_what_the_positions_cannot_hold(tiny_lm, gpt2_tokenizer):
    model, frozen = tiny_lm  # 96 positions
    rows = [{"word1": "hot " * 40, "word2": "cold"}]
    soft = Session(model, frozen, gpt2_tokenizer, BUILTIN["antonyms"], METHODS["soft"](length=8))
    soft.encode(rows)
    with pytest.raises(TemplateError, match=r"input of \d+ tokens \+ 60 new tokens needs \d+ positions; "
                                            "the model has 96"):
        soft.encode(rows, with_target=False, new_tokens=60)
    prefix = Session(model, frozen, gpt2_tokenizer, BUILTIN["antonyms"], METHODS["prefix"](length=60))
    with pytest.raises(TemplateError, match=r"\+ 60 prefix positions needs \d+ positions; the model has 96"):
        prefix.encode(rows)
    assert len(soft.encode(rows, hard_prompt="antonyms")[0]) < 96


def test_a_loaded_checkpoint_is_keyed_by_its_files_read_once(tiny_model_dir, tmp_path, monkeypatch):
    """The key of a checkpoint on disk costs no weight bytes on a later load, and still changes
    with one byte of the weights (or the dtype they are loaded in)."""
    import builtins

    from jaxprompt.models import file_hashes

    directory, cache = tmp_path / "model", str(tmp_path / "cache")
    shutil.copytree(tiny_model_dir, directory)
    for path in directory.iterdir():
        os.utime(path, (1_600_000_000, 1_600_000_000))
    load = lambda dtype="float32": Session.load(str(directory), BUILTIN["antonyms"], METHODS["soft"](length=2),
                                                dtype=dtype, cache=cache)
    monkeypatch.setattr(file_hashes, "_remembered", {})
    first = load().fingerprint()
    monkeypatch.setattr(file_hashes, "_remembered", {})  # a new process: only the table on disk
    session = load()
    opened, real_open = [], builtins.open
    monkeypatch.setattr(builtins, "open", lambda path, *a, **k: opened.append(str(path)) or real_open(path, *a, **k))
    assert session.fingerprint() == first
    monkeypatch.setattr(builtins, "open", real_open)
    assert not [p for p in opened if p.endswith(".safetensors")]
    assert load("bfloat16").fingerprint() != first
    weights = directory / "model.safetensors"
    data = bytearray(weights.read_bytes())
    data[-3] ^= 1
    weights.write_bytes(bytes(data))
    assert load().fingerprint() != first


def test_the_fingerprint_tells_quantized_weights_apart(tiny_model_dir, tmp_path):
    """The prompt cache's key differs for the same checkpoint held in float32, int8 and 4 bits, loaded
    from its files or hashed array by array (a prompt's keys/values computed on one are not the
    other's), and is the same for the same quantization loaded twice."""
    from jaxprompt.models.quantize import Scheme

    cache = str(tmp_path / "cache")
    load = lambda quantize: Session.load(tiny_model_dir, BUILTIN["antonyms"], METHODS["soft"](length=2),
                                         cache=cache, quantize=quantize)
    sessions = {q: load(q) for q in (None, "int8", Scheme("nf4", 16))}  # the tiny model's 32 inputs: groups of 16
    keys = {q: s.fingerprint() for q, s in sessions.items()}
    assert len(set(keys.values())) == 3 and load("int8").fingerprint() == keys["int8"]
    arrays = {q: dataclasses.replace(s, frozen=jax.tree.map(np.array, s.frozen), weights_id=None).fingerprint()
              for q, s in sessions.items()}
    assert len(set(arrays.values())) == 3
