"""Plots of a run: the training curve (curve.png in the run directory)."""

from __future__ import annotations

import matplotlib
import numpy as np

from jaxprompt.files import atomic_write


def plot_curve(history: list[dict], path: str, title: str = "") -> None:
    """Train and validation loss per step (a population's: the members' mean, and each member thin)."""
    matplotlib.use("Agg")
    import matplotlib.pyplot as plt  # after choosing the backend

    fig, ax = plt.subplots(figsize=(6, 4))
    for key, name, style in (("train_loss", "train", "-"), ("val_loss", "validation", "o-")):
        points = [(h["step"], np.atleast_1d(h[key])) for h in history if key in h]
        if not points:
            continue
        steps, values = [s for s, _ in points], np.stack([v for _, v in points])  # [steps, members]
        line, = ax.plot(steps, values.mean(axis=1), style, label=name + (" (mean of members)" if values.shape[1] > 1
                                                                        else ""), alpha=0.9)
        if values.shape[1] > 1:  # a population: every member, thin
            ax.plot(steps, values, "-", color=line.get_color(), alpha=0.25, linewidth=0.8)
    ax.set_xlabel("step")
    ax.set_ylabel("target-token NLL (nats)")
    ax.set_title(title)
    ax.legend()
    ax.grid(alpha=0.3)
    fig.tight_layout()
    try:
        atomic_write(path, lambda tmp: fig.savefig(tmp, dpi=100, format="png"))
    finally:
        plt.close(fig)
