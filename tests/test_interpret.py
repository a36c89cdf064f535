"""Nearest vocabulary tokens, projection to a hard prompt, PEZ, the PCA plot."""

from __future__ import annotations

import dataclasses

import jax
import jax.numpy as jnp
import numpy as np
from conftest import ANTONYM_PAIRS

from jaxprompt.data.tasks import BUILTIN
from jaxprompt.evaluation.evaluate import evaluate
from jaxprompt.evaluation.interpret import nearest_vocabulary, plot_embedding_space, projected_prompt
from jaxprompt.prompts import METHODS
from jaxprompt.prompts.cache import PromptCache
from jaxprompt.session import Session

ROWS = [{"word1": a, "word2": b} for a, b in ANTONYM_PAIRS]


def test_nearest_tokens_of_a_text_initialised_prompt(tiny_lm, gpt2_tokenizer):
    model, frozen = tiny_lm
    ids = gpt2_tokenizer.encode(" antonyms of words")
    method = METHODS["soft"](length=len(ids), init_from="text", init_ids=tuple(ids))
    vectors = method.init(jax.random.key(0), model, frozen, len(ids))["embeddings"]
    table = model.embedding_table(frozen)
    cos = nearest_vocabulary(vectors, table, gpt2_tokenizer, "cosine", k=3)
    l2 = nearest_vocabulary(vectors, table, gpt2_tokenizer, "l2", k=3)
    assert [row[0] for row in cos.token_ids] == ids and np.allclose(cos.scores[:, 0], 1.0, atol=1e-5)
    assert [row[0] for row in l2.token_ids] == ids and np.allclose(l2.scores[:, 0], 0.0, atol=1e-3)
    assert (np.diff(cos.scores, axis=1) <= 1e-6).all() and (np.diff(l2.scores, axis=1) >= -1e-6).all()
    assert cos.tokens[0][0] == gpt2_tokenizer.decode([ids[0]])
    # a random vector is off-vocabulary: its best cosine is well below 1
    off = nearest_vocabulary(jax.random.normal(jax.random.key(1), (2, 32)), table, gpt2_tokenizer, "cosine", k=1)
    assert off.scores.max() < 0.9


def test_projected_prompt_is_the_hard_prompt(tiny_lm, gpt2_tokenizer):
    """Evaluating the projection equals evaluating the decoded tokens written into the template."""
    model, frozen = tiny_lm
    method = METHODS["soft"](length=3)
    session = Session(model, frozen, gpt2_tokenizer, BUILTIN["antonyms"], method, prompt_cache=PromptCache())
    prompt = method.init(jax.random.key(0), model, frozen, 3)
    soft, hard, ids, text = projected_prompt(session, prompt)
    assert len(ids) == 3 and text == gpt2_tokenizer.decode(ids)
    projected = evaluate(dataclasses.replace(session, method=soft), hard, ROWS[:6], n_samples=0)
    # the same tokens as text: "Here are two" + tokens + " hot and" (encode per piece, as the template does)
    from jaxprompt.data.batches import collate
    from jaxprompt.data.templates import Encoded
    from jaxprompt.prompts.loss import prompt_loss
    encoded = [session.encode([r])[0] for r in ROWS[:6]]
    as_text = [Encoded([ids[s] if s >= 0 else t for t, s in zip(e.tokens, e.slots)], [-1] * len(e), e.n_target)
               for e in encoded]
    s, c = prompt_loss(model, None)(None, frozen, collate(as_text, 50256), None, 0)
    np.testing.assert_allclose(projected.loss, float(s / c), rtol=1e-5)


def test_pez_prompt_is_always_real_tokens(tiny_lm, gpt2_tokenizer):
    model, frozen = tiny_lm
    method = METHODS["pez"](length=4)
    prompt = method.init(jax.random.key(0), model, frozen, 4)
    prompt = {"embeddings": prompt["embeddings"] + 0.01 * jax.random.normal(jax.random.key(1), (4, 32))}
    virtual = method.virtual_tokens(prompt, model, frozen, 0)
    table = model.embedding_table(frozen)
    np.testing.assert_allclose(virtual, table[method.tokens(prompt, model, frozen)], atol=1e-6)
    # the gradient passes straight through to the continuous vectors
    g = jax.grad(lambda p: jnp.sum(method.virtual_tokens(p, model, frozen, 0) ** 2))(prompt)
    np.testing.assert_allclose(g["embeddings"], 2 * virtual, rtol=1e-5)


def test_relaxed_prompt_anneals_towards_its_tokens(tiny_lm):
    model, frozen = tiny_lm
    method = METHODS["relaxed"](length=3, tau_start=1.0, tau_end=0.01, anneal_steps=100, init_from="text",
                         init_ids=(11, 22, 33))
    prompt = method.init(jax.random.key(0), model, frozen, 3)
    assert list(np.asarray(method.tokens(prompt))) == [11, 22, 33]
    assert float(method.tau(0)) == 1.0 and abs(float(method.tau(100)) - 0.01) < 1e-7
    table = model.embedding_table(frozen)
    cold = method.virtual_tokens(prompt, model, frozen, 100)
    np.testing.assert_allclose(cold, table[jnp.array([11, 22, 33])], atol=1e-3)


def test_embedding_space_plot(tiny_lm, tmp_path, monkeypatch):
    """The points drawn are the vocabulary and the prompt vectors projected on the vocabulary's two
    principal axes, computed here from the covariance's eigenvectors (up to each axis's sign); the
    PNG reads back at the figure's size."""
    import matplotlib.image
    import matplotlib.pyplot as plt

    figures = []
    close = plt.close
    monkeypatch.setattr(plt, "close", lambda fig=None: (figures.append(fig), close(fig)))
    model, frozen = tiny_lm
    table = np.asarray(model.embedding_table(frozen), np.float64)
    vectors = np.asarray(jax.random.normal(jax.random.key(0), (5, 32)), np.float64)
    path = str(tmp_path / "space.png")
    plot_embedding_space(vectors, table, path, sample=len(table))  # the whole vocabulary: no sampling
    (fig,) = figures
    vocab_points, prompt_points = (c.get_offsets() for c in fig.axes[0].collections)
    mean = table.mean(0)
    _, eigenvectors = np.linalg.eigh(np.cov(table - mean, rowvar=False))
    axes = eigenvectors[:, ::-1][:, :2]  # the two largest
    expected = (vectors - mean) @ axes
    signs = np.sign(np.sum(prompt_points * expected, axis=0))
    np.testing.assert_allclose(prompt_points, expected * signs, rtol=1e-3, atol=1e-3)
    assert len(vocab_points) == len(table)
    np.testing.assert_allclose(np.var(vocab_points, axis=0), np.var((table - mean) @ axes, axis=0), rtol=1e-3)
    assert [t.get_text() for t in fig.axes[0].texts] == ["0", "1", "2", "3", "4"]
    assert matplotlib.image.imread(path).shape[:2] == (500, 600)  # 6 x 5 inches at 100 dpi
