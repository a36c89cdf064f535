"""The training curve (curve.png in the run directory): train and validation losses against steps,
a population's members thin and their mean bold, and the written prompt's validation loss as a
horizontal line.
"""
from __future__ import annotations

import matplotlib
import numpy as np

from jaxprompt.files import atomic_write


def plot_curve(history: list[dict], path: str, title: str = "", written: dict[str, float] | None = None) -> None:
    """The training curve: train and validation loss against steps (a population's members thin,
    their mean bold), and each written prompt's validation loss (`written`: label -> nats) as a
    horizontal line, so the learned prompt's gain over it can be read off."""
    matplotlib.use("Agg")
    import matplotlib.pyplot as plt  # after choosing the backend

    fig, ax = plt.subplots(figsize=(6, 4))
    for key, name, style in (("train_loss", "train", "-"), ("val_loss", "validation", "o-")):
        points = [(h["step"], np.atleast_1d(h[key])) for h in history if key in h]
        if not points:
            continue
        steps, values = [s for s, _ in points], np.stack([v for _, v in points])  # [steps, members]
        several = values.shape[1] > 1
        line, = ax.plot(steps, values.mean(axis=1), style, label=name + (" (mean of members)" if several else ""),
                        alpha=0.9, linewidth=2.2 if several else 1.5)
        if several:  # a population: every member, thin
            ax.plot(steps, values, "-", color=line.get_color(), alpha=0.3, linewidth=0.7)
    for (label, loss), style in zip((written or {}).items(), ("--", ":", "-.", (0, (5, 1)))):
        ax.axhline(loss, color="black", linestyle=style, linewidth=1.2, label=f"{label}: validation {loss:.3f}")
    ax.set_xlabel("step")
    ax.set_ylabel("target-token NLL (nats)")
    ax.set_title(title)
    ax.legend(fontsize=8)
    ax.grid(alpha=0.3)
    fig.tight_layout()
    try:
        atomic_write(path, lambda tmp: fig.savefig(tmp, dpi=100, format="png"))
    finally:
        plt.close(fig)
