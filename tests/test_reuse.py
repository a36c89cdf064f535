"""Reuse of computation: the prompt cache at inference, and rematerialisation."""

from __future__ import annotations

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from conftest import ANTONYM_PAIRS
from jaxprompt.evaluate import generate_texts, test_loss as eval_loss
from jaxprompt.models import Model
from jaxprompt.prompt_cache import PromptCache, weights_id
from jaxprompt.prompts import make_method
from jaxprompt.session import Session
from jaxprompt.tasks import BUILTIN

ROWS = [{"word1": a, "word2": b} for a, b in ANTONYM_PAIRS]


def _session(tiny_lm, gpt2_tokenizer, method, cache=None):
    model, frozen = tiny_lm
    return Session(model, frozen, gpt2_tokenizer, BUILTIN["antonyms"], method,
                   prompt_cache=cache or PromptCache())


@pytest.mark.parametrize("name", ["soft", "prefix", "written"])
def test_cached_head_equals_recomputation(tiny_lm, gpt2_tokenizer, name):
    method = make_method("soft" if name == "written" else name, length=4)
    session = _session(tiny_lm, gpt2_tokenizer, method)
    prompt = method.init(jax.random.key(0), session.model, session.frozen, session.n_virtual)
    hard = "antonyms" if name == "written" else None
    shared = eval_loss(session, prompt, ROWS, hard_prompt=hard, batch_size=8)
    plain = eval_loss(session, prompt, ROWS, hard_prompt=hard, batch_size=8, share=False)
    np.testing.assert_allclose(shared, plain, rtol=1e-5)
    assert session.prompt_cache.stats["computed_positions"] > 0
    texts = generate_texts(session, prompt, ROWS[:6], hard_prompt=hard, batch_size=4, max_new_tokens=4)
    assert texts == generate_texts(session, prompt, ROWS[:6], hard_prompt=hard, batch_size=4, max_new_tokens=4,
                                   share=False)
    hits = session.prompt_cache.stats["memory_hits"]
    eval_loss(session, prompt, ROWS, hard_prompt=hard, batch_size=8)  # the same head again: no recomputation
    assert session.prompt_cache.stats["memory_hits"] == hits + 1


def test_disk_cache_is_reused_and_extended_piece_by_piece(tiny_lm, gpt2_tokenizer, tmp_path):
    method = make_method("soft", length=4)
    first = _session(tiny_lm, gpt2_tokenizer, method, PromptCache(str(tmp_path)))
    piece = gpt2_tokenizer.encode("Here are two antonyms")
    more = gpt2_tokenizer.encode(" words, for example")
    a = first.prompt_cache.head(first, None, None, piece, [-1] * len(piece))
    assert first.prompt_cache.stats["computed_positions"] == len(piece)

    # another process (a fresh cache on the same directory) reuses it, and an extension computes
    # only its new tokens
    second = _session(tiny_lm, gpt2_tokenizer, method, PromptCache(str(tmp_path)))
    a2 = second.prompt_cache.head(second, None, None, piece, [-1] * len(piece))
    assert second.prompt_cache.stats == {"memory_hits": 0, "disk_hits": 1, "computed_positions": 0,
                                         "reused_positions": 0}
    jax.tree.map(np.testing.assert_array_equal, a, a2)
    longer = piece + more
    b = second.prompt_cache.head(second, None, None, longer, [-1] * len(longer))
    assert second.prompt_cache.stats["computed_positions"] == len(more)
    assert second.prompt_cache.stats["reused_positions"] == len(piece)
    fresh = _session(tiny_lm, gpt2_tokenizer, method).prompt_cache.head(first, None, None, longer, [-1] * len(longer))
    jax.tree.map(lambda x, y: np.testing.assert_allclose(x, y, atol=1e-5), b, fresh)


def test_cache_keys_follow_weights_and_prompt(tiny_lm, gpt2_tokenizer):
    model, frozen = tiny_lm
    changed = jax.tree.map(lambda x: x, frozen)
    changed["ln_f"]["bias"] = changed["ln_f"]["bias"] + 1.0
    assert weights_id(frozen) != weights_id(changed) and weights_id(frozen) == weights_id(jax.tree.map(jnp.array, frozen))
    method = make_method("soft", length=2)
    session = _session(tiny_lm, gpt2_tokenizer, method)
    p1 = method.init(jax.random.key(1), model, frozen, 2)
    p2 = method.init(jax.random.key(2), model, frozen, 2)
    tokens, slots = [10, 0, 0, 11], [-1, 0, 1, -1]
    h1 = session.prompt_cache.head(session, method, p1, tokens, slots)
    h2 = session.prompt_cache.head(session, method, p2, tokens, slots)
    assert session.prompt_cache.stats["computed_positions"] == 8  # different prompts: no false hit
    assert not np.allclose(h1.k, h2.k)


def test_remat_same_gradient_less_memory():
    from conftest import tiny_config
    from jaxprompt.data import Encoded, collate
    from jaxprompt.loss import prompt_loss

    config = tiny_config(n_layers=4, d_model=64, n_heads=4, d_ff=256, d_embed=64, max_positions=512)
    plain, remat = Model(config), Model(config, remat=True)
    frozen = plain.init(jax.random.key(0))
    method = make_method("soft", length=8)
    prompt = method.init(jax.random.key(1), plain, frozen, 8)
    rng = np.random.RandomState(0)
    batch = collate([Encoded([0] * 8 + list(rng.randint(0, 50000, 500)), list(range(8)) + [-1] * 500, 4)
                     for _ in range(4)], 0)

    def grad_fn(model):
        return jax.jit(jax.grad(lambda p: prompt_loss(model, method)(p, frozen, batch, None, 0)[0]))

    g0, g1 = grad_fn(plain)(prompt), grad_fn(remat)(prompt)
    np.testing.assert_allclose(g0["embeddings"], g1["embeddings"], rtol=1e-4, atol=1e-6)
    temp = lambda model: grad_fn(model).lower(prompt).compile().memory_analysis().temp_size_in_bytes
    assert temp(remat) < 0.7 * temp(plain), (temp(remat), temp(plain))
