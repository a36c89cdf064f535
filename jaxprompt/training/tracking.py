"""Experiment tracking: a run's metrics mirrored to TensorBoard and/or Weights & Biases (`--log`).

metrics.jsonl stays the source of truth; a tracker receives each of its entries as it is written,
then the written prompt's validation loss and the test results, under these names (a population's
values once per member, `.../member3`, and their mean, `.../mean`):

    train/loss, train/grad_norm, train/tokens_per_s, train/lr/<part>    every logged step
    val/loss, val/written_loss[/<task>]                                 every validation
    test/<written|learned>[/<task>]/{loss,exact_match,bleu,rouge_l}     at the last step

and the run's settings (run.json) as text (TensorBoard) or as the run's config (W&B). Both are
optional extras (`pip install 'jaxprompt[track]'`); W&B runs offline without an API key (or with
WANDB_MODE=offline) and its files then lie in the run directory, for `wandb sync` later.
"""

from __future__ import annotations

import importlib.util
import json
import os
from typing import Iterable

from jaxprompt.settings import SettingError

TRACKERS = ("tensorboard", "wandb")
TENSORBOARD_DIR = "tensorboard"  # in the run directory


def scalars(entry: dict) -> dict[str, float]:
    """A metrics.jsonl entry as tracker scalars, by name (module docstring)."""
    out: dict[str, float] = {}
    names = {"train_loss": "train/loss", "grad_norm": "train/grad_norm", "tokens_per_s": "train/tokens_per_s",
             "val_loss": "val/loss"}
    for key, name in names.items():
        if key in entry:
            out.update(_values(name, entry[key]))
    for part, rate in entry.get("lr", {}).items():
        out.update(_values(f"train/lr/{part}", rate))
    return out


def _values(name: str, value) -> dict[str, float]:
    """One scalar, or a population's: one per member and their mean."""
    if not isinstance(value, (list, tuple)):
        return {name: float(value)}
    out = {f"{name}/member{k}": float(v) for k, v in enumerate(value)}
    out[f"{name}/mean"] = sum(map(float, value)) / len(value)
    return out


def result_scalars(results: list[dict], members: list[dict] | None = None) -> dict[str, float]:
    """results.json's test results as tracker scalars: `test/<written|learned>[/<task>]/<metric>`,
    a population's learned rows per member (`members`: results.json's) and as their mean."""
    out: dict[str, float] = {}
    for i, r in enumerate(results):
        name = _result_name(r["label"])
        for metric in ("loss", "exact_match", "bleu", "rouge_l"):
            if r.get(metric) is None:
                continue
            if members and name.startswith("test/learned"):
                out.update(_values(f"{name}/{metric}", [m["results"][i][metric] for m in members]))
            else:  # one prompt (a population's written prompt is every member's)
                out[f"{name}/{metric}"] = float(r[metric])
    return out


def written_scalars(written: dict[str, float]) -> dict[str, float]:
    """The written prompts' validation losses (label -> nats, run.written_validation_losses)."""
    return {"val/written_loss" + (f"/{label.removesuffix(': written')}" if label != "written" else ""): loss
            for label, loss in written.items()}


def _result_name(label: str) -> str:
    """'written: ...' -> 'test/written'; 'antonyms: learned: soft P=20' -> 'test/learned/antonyms'."""
    task, _, rest = label.partition(": ")
    if task in ("written", "learned"):
        return f"test/{task}"
    return f"test/{rest.partition(':')[0]}/{task}"


class Trackers:
    """The trackers of one run, each receiving the same scalars. Made before anything loads (a
    missing extra is one line at once), opened with the run's settings by `start`."""

    def __init__(self, kinds: Iterable[str], run_dir: str, name: str | None = None, project: str = "jaxprompt"):
        self.kinds, self.run_dir, self.project = tuple(dict.fromkeys(kinds)), run_dir, project
        self.name = name or os.path.basename(os.path.abspath(run_dir))
        self._tensorboard = self._wandb = None
        for kind, module in (("tensorboard", "tensorboardX"), ("wandb", "wandb")):
            if kind in self.kinds and importlib.util.find_spec(module) is None:
                raise SettingError(f"--log {kind} needs {module}: pip install 'jaxprompt[track]'")

    def start(self, settings: dict, resume_step: int | None = None) -> None:
        """Opens every tracker with the run's settings (run.json); a resumed run (from the checkpoint
        of `resume_step`) drops what the interrupted one logged after it."""
        if "tensorboard" in self.kinds:
            from tensorboardX import SummaryWriter

            self._tensorboard = SummaryWriter(os.path.join(self.run_dir, TENSORBOARD_DIR),
                                              purge_step=None if resume_step is None else resume_step + 1)
            self._tensorboard.add_text("settings", "```\n" + json.dumps(settings, indent=2) + "\n```", 0)
        if "wandb" in self.kinds:
            import wandb

            mode = os.environ.get("WANDB_MODE") or ("online" if _wandb_key() else "offline")
            self._wandb = wandb.init(project=self.project, name=self.name, dir=self.run_dir, config=settings,
                                     mode=mode, resume="allow", reinit="create_new")

    def log(self, entry: dict) -> None:
        """A metrics.jsonl entry."""
        self.log_scalars(scalars(entry), entry["step"])

    def log_scalars(self, values: dict[str, float], step: int) -> None:
        if self._tensorboard is not None:
            for name, value in values.items():
                self._tensorboard.add_scalar(name, value, step)
        if self._wandb is not None and values:
            self._wandb.log(values, step=step)

    def close(self) -> None:
        if self._tensorboard is not None:
            self._tensorboard.close()
        if self._wandb is not None:
            self._wandb.finish()


def _wandb_key() -> bool:
    """Whether W&B has an API key here (env or ~/.netrc): without one, it logs offline."""
    if os.environ.get("WANDB_API_KEY"):
        return True
    try:
        with open(os.path.join(os.path.expanduser("~"), ".netrc")) as f:
            return "api.wandb.ai" in f.read()
    except OSError:
        return False
