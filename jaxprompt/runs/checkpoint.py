"""Orbax checkpoints of the train state only (prompt, optimizer state, step, rng, loop state).

The frozen LM is never re-saved: a run records the model's id/path in run.json instead.
Layout under the run directory:

    last/<step>/        the last `keep` saves
    best/<step>/        the save with the lowest validation loss
    checkpoints.json    the commit record: which steps of last/ and best/ belong to the run

A save writes `last/<step>` (and `best/<step>`), each atomically (Orbax renames a finished
temporary directory), and only then replaces the commit record, in one rename. The record is the
truth: a directory it does not name is a save that a crash interrupted (or one it superseded), and
`repair` removes it before training continues. So last and best change together or not at all:
a kill at any point leaves the previous consistent pair, and resuming recomputes the lost steps.

In a multi-process run every process calls `save` and `restore`, as Orbax's multi-process
checkpoints require (Orbax writes a host value once, from process 0, and synchronises the
processes). Process 0 alone removes leftovers and writes the commit record, between barriers: no
process writes into a directory being removed, and none reads a record naming an unfinished save.
"""

from __future__ import annotations

import json
import os
import re
import shutil
from typing import Any

import jax
import numpy as np
import orbax.checkpoint as ocp

from jaxprompt.files import atomic_write
from jaxprompt.models.convert import CheckpointError  # noqa: F401  (the one class; raised here too)
from jaxprompt.parallel.distributed import barrier, is_writer
from jaxprompt.settings import one_line

RECORD = "checkpoints.json"
KINDS = ("last", "best")



def read_record(run_dir: str) -> dict:
    """The run's commit record: {"last": [steps, oldest first], "best": step or None}."""
    path = os.path.join(run_dir, RECORD)
    if not os.path.isfile(path):
        return {"last": [], "best": None}
    try:
        with open(path) as f:
            record = json.load(f)
        steps, best = record["last"], record["best"]
        if not all(isinstance(s, int) for s in steps) or not (best is None or isinstance(best, int)):
            raise ValueError("steps must be integers")
    except (OSError, ValueError, KeyError, TypeError) as e:
        raise CheckpointError(f"{path} is not a checkpoint record ({one_line(e)})") from None
    return {"last": steps, "best": best}


class Checkpointer:
    def __init__(self, run_dir: str, keep: int = 3):
        self.run_dir = os.path.abspath(run_dir)
        self.keep = keep
        self._orbax = ocp.Checkpointer(ocp.CompositeCheckpointHandler())
        self.record = self._read_record()

    # ---- the commit record -----------------------------------------------------------------------

    def _read_record(self) -> dict:
        return read_record(self.run_dir)

    def _committed(self, kind: str) -> set[int]:
        return set(self.record["last"]) if kind == "last" else {self.record["best"]} - {None}

    def repair(self) -> list[str]:
        """Removes what no commit names: saves a crash interrupted, superseded ones, Orbax temporaries.
        Only a writer (holding the run's lock) may call this. Returns the removed paths."""
        removed = []
        for kind in KINDS:
            directory = os.path.join(self.run_dir, kind)
            if not os.path.isdir(directory):
                continue
            keep = {str(s) for s in self._committed(kind)}
            for name in os.listdir(directory):
                if name not in keep:
                    path = os.path.join(directory, name)
                    shutil.rmtree(path) if os.path.isdir(path) else os.remove(path)
                    removed.append(path)
        return removed

    # ---- save / restore --------------------------------------------------------------------------

    def latest_step(self) -> int | None:
        return self.record["last"][-1] if self.record["last"] else None

    def best_step(self) -> int | None:
        return self.record["best"]

    def save(self, state, metadata: dict, is_best: bool = False, best=None, step: int | None = None) -> None:
        """Saves a state (host values, the same in every process) as the newest of last/, and as
        best/ when `is_best` (`best`, where that is another state: a population's, whose members
        each keep the prompt of their own best step); then commits both at once. A step that is
        already committed is not written again.

        `state`: a `TrainState` (training; its step is the save's), or `{"params": prompt}` with
        `step` (a prompt without a training state, e.g. imported from PEFT)."""
        if step is None:
            step = int(np.max(state.step))  # a population's state holds one step per member, all equal
        args = ocp.args.Composite(state=ocp.args.StandardSave(state), meta=ocp.args.JsonSave(metadata))
        best_args = args if best is None else ocp.args.Composite(state=ocp.args.StandardSave(best),
                                                                 meta=ocp.args.JsonSave(metadata))
        new_last = step not in self.record["last"]
        new_best = is_best and self.record["best"] != step
        if not (new_last or new_best):
            return
        for kind, write in (("last", new_last), ("best", new_best)):
            if write:
                path = os.path.join(self.run_dir, kind, str(step))
                if is_writer():
                    if os.path.exists(path):  # an uncommitted save of this step: a crash's leftover
                        shutil.rmtree(path)
                    os.makedirs(os.path.dirname(path), exist_ok=True)
                barrier(f"jaxprompt-checkpoint-{kind}-{step}")
                self._orbax.save(path, args=args if kind == "last" else best_args)
        barrier(f"jaxprompt-checkpoint-saved-{step}")
        last = [s for s in self.record["last"] if s != step] + [step]
        record = {"last": last[-self.keep:], "best": step if is_best else self.record["best"]}
        if is_writer():
            atomic_write(os.path.join(self.run_dir, RECORD), json.dumps(record))
            self.record = record
            self.repair()
        barrier(f"jaxprompt-checkpoint-committed-{step}")
        self.record = record

    def restore(self, like, which: str = "last") -> tuple[Any, dict]:
        """The committed state shaped like `like` (a TrainState), and its metadata."""
        restored = self._restore(which, ocp.args.StandardRestore(jax.tree.map(ocp.utils.to_shape_dtype_struct, like)))
        return restored.state, restored.meta

    def restore_prompt(self, which: str = "best") -> dict:
        """The committed prompt: the saved state's `params`, read as stored (no template: loading a
        run builds no optimizer)."""
        state = self._restore(which, ocp.args.StandardRestore()).state
        if not isinstance(state, dict) or not isinstance(state.get("params"), dict):
            raise CheckpointError(f"checkpoint {which} in {self.run_dir} holds no prompt")
        return state["params"]

    def _restore(self, which: str, state_args):
        step = self.latest_step() if which == "last" else self.best_step()
        if step is None:
            raise CheckpointError(f"no {which} checkpoint in {self.run_dir}")
        path = os.path.join(self.run_dir, which, str(step))
        try:
            return self._orbax.restore(path, args=ocp.args.Composite(state=state_args, meta=ocp.args.JsonRestore()))
        except Exception as e:  # Orbax/TensorStore raise many types, with pages of detail
            raise CheckpointError(
                f"checkpoint {which}/{step} in {self.run_dir} cannot be read, its files are damaged or incomplete "
                f"({_reason(e)}); it was left in place, other checkpoints are untouched"
            ) from None


def _reason(e: Exception) -> str:
    """Why a checkpoint could not be read, in a few words. TensorStore's text nests the context of
    every layer (the file read, the database, the driver opened, then the whole TensorStore spec as
    JSON): its status code and the innermost cause say what happened."""
    # the details TensorStore appends: [tensorstore_spec='{...}'], [tensorstore_spec[1]='{...}'], ...
    text = re.split(r" \[\w+(?:\[\d+\])?=", " ".join(str(e).split()))[0]
    status, _, context = text.partition(": ")
    if status.isupper() and context:  # an absl status: CODE: context: ...: cause
        return f"{status}: {context.rsplit(': ', 1)[-1]}"[:160]
    return one_line(e, limit=160)
