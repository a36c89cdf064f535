"""Orbax checkpoints of the train state only (prompt, optimizer state, step, rng, data position).

The frozen LM is never re-saved: a run records the model's id/path in its metadata instead.
Layout under the run directory:

    last/<step>/   the last `keep` saves
    best/<step>/   the save with the lowest validation loss
    run.json       what the run was (model, method, template, hyper-parameters)

Orbax writes each save to a temporary directory and renames it when complete, so a crash
mid-save leaves the previous checkpoints intact.
"""

from __future__ import annotations

import json
import os

import jax
import orbax.checkpoint as ocp

from jaxprompt.train import TrainState


class CheckpointError(RuntimeError):
    """A checkpoint that cannot be read back."""


class Checkpointer:
    def __init__(self, run_dir: str, keep: int = 3):
        self.run_dir = os.path.abspath(run_dir)
        os.makedirs(self.run_dir, exist_ok=True)
        self.last = ocp.CheckpointManager(
            os.path.join(self.run_dir, "last"), options=ocp.CheckpointManagerOptions(max_to_keep=keep, create=True))
        self.best = ocp.CheckpointManager(
            os.path.join(self.run_dir, "best"),
            options=ocp.CheckpointManagerOptions(max_to_keep=1, best_fn=lambda m: m["val_loss"], best_mode="min",
                                                 create=True))

    def save(self, state: TrainState, metadata: dict, val_loss: float | None = None) -> None:
        """Saves an (unreplicated) state; also as best when `val_loss` is the lowest so far."""
        step = int(state.step)
        args = ocp.args.Composite(state=ocp.args.StandardSave(state), meta=ocp.args.JsonSave(metadata))
        self.last.save(step, args=args, force=True)
        if val_loss is not None:
            self.best.save(step, args=args, metrics={"val_loss": float(val_loss)}, force=True)

    def wait(self) -> None:
        self.last.wait_until_finished()
        self.best.wait_until_finished()

    def latest_step(self) -> int | None:
        return self.last.latest_step()

    def best_step(self) -> int | None:
        return self.best.best_step()

    def restore(self, like: TrainState, which: str = "last", step: int | None = None) -> tuple[TrainState, dict]:
        """The saved state shaped like `like`, and its metadata."""
        manager = self.last if which == "last" else self.best
        if step is None:
            step = manager.latest_step() if which == "last" else manager.best_step()
        if step is None:
            raise CheckpointError(f"no {which} checkpoint in {self.run_dir}")
        abstract = jax.tree.map(ocp.utils.to_shape_dtype_struct, like)
        try:
            restored = manager.restore(step, args=ocp.args.Composite(
                state=ocp.args.StandardRestore(abstract), meta=ocp.args.JsonRestore()))
        except Exception as e:
            raise CheckpointError(
                f"checkpoint {which}/{step} in {self.run_dir} cannot be read ({type(e).__name__}: {e}); "
                "it was left in place, other checkpoints are untouched"
            ) from e
        return restored.state, restored.meta

    def close(self) -> None:
        self.wait()
        self.last.close()
        self.best.close()


def write_run_info(run_dir: str, info: dict) -> None:
    os.makedirs(run_dir, exist_ok=True)
    tmp = os.path.join(run_dir, "run.json.tmp")
    with open(tmp, "w") as f:
        json.dump(info, f, indent=2)
    os.replace(tmp, os.path.join(run_dir, "run.json"))


def read_run_info(run_dir: str) -> dict:
    path = os.path.join(run_dir, "run.json")
    if not os.path.isfile(path):
        raise CheckpointError(f"{run_dir} is not a jaxprompt run directory: no run.json")
    with open(path) as f:
        return json.load(f)
