"""The prompt cache: heads computed once and reused (memory, disk, piece by piece), keyed by every
weight byte, and never served when damaged."""

from __future__ import annotations

import os

import jax
import numpy as np
import pytest
from conftest import ANTONYM_PAIRS

from jaxprompt.data.tasks import BUILTIN
from jaxprompt.evaluation.evaluate import generate_texts, heldout_loss
from jaxprompt.models.file_hashes import TABLE_NAME
from jaxprompt.paths import PROMPT_CACHE_ENV, prompt_cache_dir
from jaxprompt.prompts import METHODS
from jaxprompt.prompts.cache import PromptCache
from jaxprompt.session import Session

ROWS = [{"word1": a, "word2": b} for a, b in ANTONYM_PAIRS]


def _session(tiny_lm, gpt2_tokenizer, method, cache=None, frozen=None):
    model, weights = tiny_lm
    return Session(model, weights if frozen is None else frozen, gpt2_tokenizer, BUILTIN["antonyms"], method,
                   prompt_cache=cache or PromptCache())


CASES = [("gpt2", "soft"), ("gpt2", "prefix"), ("gpt2", "written"), ("llama", "prefix"), ("gemma2", "soft"),
         ("gemma2", "adaption")]


@pytest.mark.parametrize("family,name", CASES, ids=[f"{f}-{n}" for f, n in CASES])
def test_cached_head_equals_recomputation(tiny_lms, gpt2_tokenizer, family, name):
    """Losses and greedy generations from a cached head equal recomputing everything (Gemma 2: with
    sliding windows shorter than the sequences)."""
    method = METHODS["soft" if name == "written" else name](length=4)
    session = _session(tiny_lms(family), gpt2_tokenizer, method)
    prompt = method.init(jax.random.key(0), session.model, session.frozen, session.n_virtual)
    if name == "adaption":  # gates off zero, so the adapters show
        prompt = {**prompt, "gate": prompt["gate"] + 0.5}
    hard = "antonyms" if name == "written" else None
    shared = heldout_loss(session, prompt, ROWS, hard_prompt=hard, batch_size=8)
    plain = heldout_loss(session, prompt, ROWS, hard_prompt=hard, batch_size=8, share=False)
    np.testing.assert_allclose(shared, plain, rtol=1e-5)
    assert session.prompt_cache.stats["computed_positions"] > 0
    texts = generate_texts(session, prompt, ROWS[:6], hard_prompt=hard, batch_size=4, max_new_tokens=4)
    assert texts == generate_texts(session, prompt, ROWS[:6], hard_prompt=hard, batch_size=4, max_new_tokens=4,
                                   share=False)
    hits = session.prompt_cache.stats["memory_hits"]
    heldout_loss(session, prompt, ROWS, hard_prompt=hard, batch_size=8)  # the same head again: no recomputation
    assert session.prompt_cache.stats["memory_hits"] == hits + 1


@pytest.mark.parametrize("family", ["gpt2", "gemma2"])
def test_disk_cache_is_reused_and_extended_piece_by_piece(tiny_lms, gpt2_tokenizer, tmp_path, family):
    """(Gemma 2: the extension's tokens see the cached ones through a sliding window.)"""
    tiny_lm = tiny_lms(family)
    method = METHODS["soft"](length=4)
    first = _session(tiny_lm, gpt2_tokenizer, method, PromptCache(str(tmp_path)))
    piece = gpt2_tokenizer.encode("Here are two antonyms")
    more = gpt2_tokenizer.encode(" words, for example, and some more words")
    a = first.prompt_cache.head(first, None, None, piece, [-1] * len(piece))
    assert first.prompt_cache.stats["computed_positions"] == len(piece)

    # another process (a fresh cache on the same directory) reuses it, and an extension computes
    # only its new tokens
    second = _session(tiny_lm, gpt2_tokenizer, method, PromptCache(str(tmp_path)))
    a2 = second.prompt_cache.head(second, None, None, piece, [-1] * len(piece))
    assert second.prompt_cache.stats == {"memory_hits": 0, "disk_hits": 1, "computed_heads": 0, "computed_positions": 0,
                                         "reused_positions": 0, "corrupt_entries": 0}
    jax.tree.map(np.testing.assert_array_equal, a, a2)
    longer = piece + more
    b = second.prompt_cache.head(second, None, None, longer, [-1] * len(longer))
    assert second.prompt_cache.stats["computed_positions"] == len(more)
    assert second.prompt_cache.stats["reused_positions"] == len(piece)
    fresh = _session(tiny_lm, gpt2_tokenizer, method).prompt_cache.head(first, None, None, longer, [-1] * len(longer))
    jax.tree.map(lambda x, y: np.testing.assert_allclose(x, y, atol=1e-5), b, fresh)


def test_an_edited_weight_anywhere_is_a_different_entry(tiny_lm, gpt2_tokenizer, tmp_path):
    """One edited embedding row (of a head token, at an element no strided sample would read):
    the disk cache must not serve the old model's head."""
    method = METHODS["soft"](length=4)
    tokens = gpt2_tokenizer.encode("Here are two antonyms")
    original = _session(tiny_lm, gpt2_tokenizer, method, PromptCache(str(tmp_path)))
    original.prompt_cache.head(original, None, None, tokens, [-1] * len(tokens))
    edited = jax.tree.map(np.array, original.frozen)
    edited["wte"]["embedding"][tokens[1], 5] += 3.0
    cached = _session(tiny_lm, gpt2_tokenizer, method, PromptCache(str(tmp_path)), frozen=edited)
    served = cached.prompt_cache.head(cached, None, None, tokens, [-1] * len(tokens))
    truth = _session(tiny_lm, gpt2_tokenizer, method, frozen=edited).prompt_cache.head(
        cached, None, None, tokens, [-1] * len(tokens))
    assert cached.prompt_cache.stats["disk_hits"] == 0
    jax.tree.map(np.testing.assert_array_equal, served, truth)


def test_different_prompts_are_different_entries(tiny_lm, gpt2_tokenizer):
    model, frozen = tiny_lm
    method = METHODS["soft"](length=2)
    session = _session(tiny_lm, gpt2_tokenizer, method)
    p1, p2 = (method.init(jax.random.key(k), model, frozen, 2) for k in (1, 2))
    tokens, slots = [10, 0, 0, 11], [-1, 0, 1, -1]
    h1 = session.prompt_cache.head(session, method, p1, tokens, slots)
    h2 = session.prompt_cache.head(session, method, p2, tokens, slots)
    assert session.prompt_cache.stats["computed_positions"] == 8  # no false hit
    assert not np.allclose(h1.k, h2.k)


def test_a_damaged_entry_is_recomputed_and_rewritten(tiny_lm, gpt2_tokenizer, tmp_path):
    method = METHODS["soft"](length=4)
    tokens = gpt2_tokenizer.encode("Here are two antonyms and more")
    first = _session(tiny_lm, gpt2_tokenizer, method, PromptCache(str(tmp_path)))
    truth = first.prompt_cache.head(first, None, None, tokens, [-1] * len(tokens))
    (entry,) = os.listdir(tmp_path)
    data = bytearray((tmp_path / entry).read_bytes())
    data[-7] ^= 0x10  # one flipped bit in the values
    (tmp_path / entry).write_bytes(bytes(data))

    second = _session(tiny_lm, gpt2_tokenizer, method, PromptCache(str(tmp_path)))
    served = second.prompt_cache.head(second, None, None, tokens, [-1] * len(tokens))
    assert second.prompt_cache.stats["corrupt_entries"] == 1 and second.prompt_cache.stats["disk_hits"] == 0
    jax.tree.map(np.testing.assert_array_equal, served, truth)
    third = _session(tiny_lm, gpt2_tokenizer, method, PromptCache(str(tmp_path)))
    third.prompt_cache.head(third, None, None, tokens, [-1] * len(tokens))
    assert third.prompt_cache.stats["disk_hits"] == 1  # rewritten whole

    (tmp_path / entry).write_bytes(b"\x10\x00")  # truncated to nothing useful
    fourth = _session(tiny_lm, gpt2_tokenizer, method, PromptCache(str(tmp_path)))
    jax.tree.map(np.testing.assert_array_equal, fourth.prompt_cache.head(fourth, None, None, tokens,
                                                                         [-1] * len(tokens)), truth)
    assert fourth.prompt_cache.stats["corrupt_entries"] == 1


def test_sessions_cache_on_disk_where_the_environment_says(tiny_model_dir, monkeypatch, tmp_path):
    monkeypatch.setenv(PROMPT_CACHE_ENV, str(tmp_path / "cache"))
    session = Session.load(tiny_model_dir, BUILTIN["antonyms"], METHODS["soft"](length=2))
    assert session.prompt_cache.directory == prompt_cache_dir() == str(tmp_path / "cache")
    heldout_loss(session, session.method.init(jax.random.key(0), session.model, session.frozen, 2), ROWS[:4])
    # one head, beside the weights' file-hash table (file_hashes.py) when this worker hashed them
    heads = set(os.listdir(tmp_path / "cache")) - {TABLE_NAME}
    assert len(heads) == 1 and heads.pop().endswith(".safetensors")
    assert Session.load(tiny_model_dir, BUILTIN["antonyms"], METHODS["soft"](length=2),
                        cache=False).prompt_cache.directory is None
    monkeypatch.delenv(PROMPT_CACHE_ENV)
    monkeypatch.setenv("XDG_CACHE_HOME", str(tmp_path / "xdg"))
    assert prompt_cache_dir() == str(tmp_path / "xdg" / "jaxprompt" / "prompt-cache")


def test_a_head_is_the_inference_form_of_its_prompt(tiny_lm, gpt2_tokenizer):
    """A relaxed prompt's head is its final-temperature soft prompt's, not its first step's."""
    model, frozen = tiny_lm
    relaxed = METHODS["relaxed"](length=2, tau_end=0.05, anneal_steps=10)
    prompt = relaxed.init(jax.random.key(0), model, frozen, 2)
    prompt = {"logits": prompt["logits"] + 3.0 * jax.random.normal(jax.random.key(1), prompt["logits"].shape)}
    soft, baked = relaxed.inference_prompt(prompt, model, frozen)
    tokens, slots = [10, 0, 0, 11], [-1, 0, 1, -1]
    served = _session(tiny_lm, gpt2_tokenizer, relaxed).prompt_cache.head(
        _session(tiny_lm, gpt2_tokenizer, relaxed), relaxed, prompt, tokens, slots)
    expected = _session(tiny_lm, gpt2_tokenizer, soft).prompt_cache.head(
        _session(tiny_lm, gpt2_tokenizer, soft), soft, baked, tokens, slots)
    jax.tree.map(lambda a, b: np.testing.assert_allclose(a, b, atol=1e-6), served, expected)
