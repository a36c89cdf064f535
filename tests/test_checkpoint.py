"""Checkpoints: last k + best committed together, uncommitted saves repaired, damage reported in one line."""

from __future__ import annotations

import json
import os

import jax
import jax.numpy as jnp
import optax
import orbax.checkpoint as ocp
import pytest

from jaxprompt.runs.checkpoint import RECORD, Checkpointer, CheckpointError
from jaxprompt.training.step import TrainState


def _state(step: int, value: float = 0.0) -> TrainState:
    prompt = {"embeddings": jnp.full((2, 3), value, jnp.float32)}
    state = TrainState.create(prompt, optax.adam(0.1), jax.random.PRNGKey(0))
    return state.replace(step=jnp.int32(step))


def test_last_k_and_best_are_committed_together(tmp_path):
    ckpt = Checkpointer(str(tmp_path), keep=2)
    for step, best in ((1, True), (2, False), (3, False), (4, False)):
        ckpt.save(_state(step, float(step)), {"step": step}, is_best=best)
    assert json.loads((tmp_path / RECORD).read_text()) == {"last": [3, 4], "best": 1}
    assert sorted(os.listdir(tmp_path / "last")) == ["3", "4"] and os.listdir(tmp_path / "best") == ["1"]
    state, meta = Checkpointer(str(tmp_path)).restore(_state(0), "best")  # kept after leaving last/
    assert int(state.step) == 1 and meta == {"step": 1} and float(state.params["embeddings"][0, 0]) == 1.0
    ckpt.save(_state(4, 9.0), {"step": 4}, is_best=True)  # a committed step is never rewritten
    assert float(ckpt.restore(_state(0), "last")[0].params["embeddings"][0, 0]) == 4.0


def test_only_a_writer_repairs_uncommitted_saves(tmp_path):
    ckpt = Checkpointer(str(tmp_path))
    ckpt.save(_state(5), {}, is_best=True)
    args = ocp.args.Composite(state=ocp.args.StandardSave(_state(10)), meta=ocp.args.JsonSave({}))
    ckpt._orbax.save(str(tmp_path / "last" / "10"), args=args)  # a save a crash left uncommitted
    (tmp_path / "best" / "7.orbax-checkpoint-tmp-1").mkdir()
    reader = Checkpointer(str(tmp_path))
    assert reader.latest_step() == 5 and int(reader.restore(_state(0))[0].step) == 5
    assert os.path.isdir(tmp_path / "last" / "10")  # a reader (another process) deletes nothing
    removed = reader.repair()
    assert sorted(os.path.relpath(p, tmp_path) for p in removed) == [os.path.join("best", "7.orbax-checkpoint-tmp-1"),
                                                                      os.path.join("last", "10")]


def test_a_corrupt_checkpoint_is_one_line_and_left_in_place(tmp_path):
    ckpt = Checkpointer(str(tmp_path))
    ckpt.save(_state(2), {})
    files = [p for p in (tmp_path / "last" / "2" / "state").rglob("*") if p.is_file()]
    for p in files:
        p.write_bytes(b"garbage")
    with pytest.raises(CheckpointError, match="last/2 .* cannot be read.*left in place") as info:
        Checkpointer(str(tmp_path)).restore(_state(0))
    assert "\n" not in str(info.value) and len(str(info.value)) < 500
    assert all(p.exists() for p in files)


def test_a_truncated_checkpoint_is_named_in_a_few_words(tmp_path):
    """TensorStore's error nests every layer's context and its whole spec (JSON); the line keeps its
    status and innermost cause."""
    ckpt = Checkpointer(str(tmp_path))
    ckpt.save(_state(2), {})
    for p in (tmp_path / "last" / "2" / "state").rglob("*"):
        if p.is_file() and p.parent.name == "d":  # the arrays' data, cut short
            p.write_bytes(p.read_bytes()[:10])
    with pytest.raises(CheckpointError) as info:
        Checkpointer(str(tmp_path)).restore(_state(0))
    message = str(info.value)
    assert "its files are damaged or incomplete (OUT_OF_RANGE: " in message, message
    assert "{" not in message and message.count(str(tmp_path)) == 1 and len(message) < 250 + len(str(tmp_path)), message


def test_a_damaged_commit_record_is_named(tmp_path):
    (tmp_path / RECORD).write_text('{"last": [1, "x"], "best": null}')
    with pytest.raises(CheckpointError, match=f"{RECORD} is not a checkpoint record"):
        Checkpointer(str(tmp_path))
