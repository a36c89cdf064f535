"""What a learned prompt "says": nearest vocabulary tokens, projection to a hard prompt, a PCA plot."""

from __future__ import annotations

import dataclasses

import jax.numpy as jnp
import numpy as np

from jaxprompt.data.tokenizer import Tokenizer
from jaxprompt.files import atomic_write
from jaxprompt.prompts.soft import SoftPrompt, nearest_tokens, similarity


@dataclasses.dataclass
class Neighbours:
    metric: str
    token_ids: np.ndarray  # [N, k]
    scores: np.ndarray  # [N, k]: cosine similarity, or L2 distance
    tokens: list[list[str]]


def nearest_vocabulary(vectors, table, tokenizer: Tokenizer, metric: str = "cosine", k: int = 5) -> Neighbours:
    """The k nearest vocabulary tokens of every prompt vector, with their similarity (or distance)."""
    sims = np.asarray(similarity(jnp.asarray(vectors), jnp.asarray(table), metric))
    sims = sims[:, : tokenizer.vocab_size]  # rows past the tokenizer (OPT's padding) are not tokens
    ids = np.argsort(-sims, axis=-1)[:, :k]
    scores = np.take_along_axis(sims, ids, axis=-1)
    if metric == "l2":  # report distances
        scores = np.sqrt(np.maximum(-scores, 0.0))
    return Neighbours(metric, ids, scores, [[tokenizer.token_str(int(i)) for i in row] for row in ids])


def project(vectors, table, metric: str = "cosine") -> np.ndarray:
    """The hard prompt a soft prompt projects to: each vector's nearest token id."""
    return np.asarray(nearest_tokens(jnp.asarray(vectors), jnp.asarray(table), metric))


def format_neighbours(n: Neighbours) -> str:
    lines = []
    for i, (tokens, scores) in enumerate(zip(n.tokens, n.scores)):
        cells = ", ".join(f"{t!r} {s:.3f}" for t, s in zip(tokens, scores))
        lines.append(f"  [{i:2d}] {cells}")
    return "\n".join(lines)


def plot_embedding_space(vectors, table, path: str, tokenizer: Tokenizer | None = None, sample: int = 5000,
                         seed: int = 0) -> None:
    """2-D PCA of (a sample of) the vocabulary embeddings with the prompt vectors on top, as PNG.

    The PCA is fitted on the vocabulary, so the plot shows where the prompt sits in the LM's own
    embedding space (learned vectors typically sit off the vocabulary cloud).
    """
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    table = np.asarray(table, np.float32)
    vectors = np.asarray(vectors, np.float32)
    rng = np.random.default_rng(seed)
    vocab = table[rng.choice(len(table), size=min(sample, len(table)), replace=False)]
    mean = vocab.mean(0)
    _, _, vt = np.linalg.svd(vocab - mean, full_matrices=False)
    axes = vt[:2].T
    v2, p2 = (vocab - mean) @ axes, (vectors - mean) @ axes
    fig, ax = plt.subplots(figsize=(6, 5))
    ax.scatter(v2[:, 0], v2[:, 1], s=2, alpha=0.3, color="gray", label="vocabulary")
    ax.scatter(p2[:, 0], p2[:, 1], s=30, color="crimson", label="prompt vectors")
    for i, (x, y) in enumerate(p2):
        ax.annotate(str(i), (x, y), fontsize=7)
    ax.set_title("prompt vectors in the embedding space (PCA of vocabulary)")
    ax.legend()
    fig.tight_layout()
    try:
        atomic_write(path, lambda tmp: fig.savefig(tmp, dpi=100, format="png"))
    finally:
        plt.close(fig)


def prompt_vectors(session, prompt) -> np.ndarray:
    """The virtual token embeddings of the prompt's inference form ([N, E]: p-tuning baked, relaxed at
    its final temperature), what evaluation scores."""
    method = session.method
    if not method.takes_positions:
        raise ValueError(f"{method.name} prompts are not token embeddings: there is no vocabulary to compare them with")
    serving_method, serving = method.inference_prompt(prompt, session.model, session.frozen)
    return np.asarray(serving_method.virtual_tokens(serving, session.model, session.frozen, 0), np.float32)


def projected_prompt(session, prompt, metric: str = "cosine"):
    """The hard prompt a learned embedding prompt projects to: (soft method, prompt made of the
    nearest tokens' embeddings, token ids, text). Evaluating it is evaluating the hard prompt, since
    a token's embedding is exactly what the model sees for that token."""
    table = session.model.embedding_table(session.frozen)
    ids = project(prompt_vectors(session, prompt), table, metric)
    soft = SoftPrompt(length=session.prompt_length)
    return soft, {"embeddings": jnp.asarray(table, jnp.float32)[ids]}, ids, session.tokenizer.decode(ids)
