"""The training loop: what it reports is what it saved, bounded compiles, NaN guard, exact resume
from any crash point and from a stop on a signal, early stopping."""

from __future__ import annotations

import os
import shutil
import signal

import jax
import jax.numpy as jnp
import numpy as np
import orbax.checkpoint as ocp
import pytest
from conftest import ANTONYM_PAIRS, tiny_config

from jaxprompt.config import LoopConfig, OptimizerConfig
from jaxprompt.data.batches import Batches, eval_batches
from jaxprompt.data.templates import Template, common_prefix_length, encode
from jaxprompt.models import Model
from jaxprompt.parallel import preemption
from jaxprompt.prompts import METHODS, SoftPrompt
from jaxprompt.prompts.loss import prompt_loss
from jaxprompt.runs import checkpoint
from jaxprompt.runs.checkpoint import Checkpointer, CheckpointError
from jaxprompt.training.loop import NonFiniteLossError, fit
from jaxprompt.training.optim import make_optimizer
from jaxprompt.training.step import TrainState

TEMPLATE = Template("Here are two {prompt} {word1} and", " {word2}")
P = 4


def _examples(tokenizer, pairs=ANTONYM_PAIRS, **kw):
    return [encode(TEMPLATE, {"word1": a, "word2": b}, tokenizer, SoftPrompt(length=P), **kw) for a, b in pairs]


def _setup(tiny_lm, gpt2_tokenizer, name="soft", **options):
    model, frozen = tiny_lm
    method = METHODS[name](length=P, **options)
    prompt = method.init(jax.random.key(0), model, frozen, P)
    return model, frozen, method, prompt, _examples(gpt2_tokenizer)


def _like(prompt, optimizer):
    return TrainState.create(prompt, optimizer, jax.random.PRNGKey(0))


def test_the_reported_best_is_the_saved_prompt_on_untouched_weights(tiny_lm, gpt2_tokenizer, tmp_path):
    """Reload the best checkpoint and weights built afresh: the loss is the one fit reported, and
    the prompt is the one that moved (the frozen weights never did, not even on the devices)."""
    model, frozen, method, prompt, examples = _setup(tiny_lm, gpt2_tokenizer)
    val = [b for _, b in eval_batches(examples[:8], 8, 50256)]
    optimizer = make_optimizer(OptimizerConfig(lr=0.05), prompt)
    result = fit(prompt_loss(model, method), optimizer, prompt, frozen, Batches(examples, 8, 50256), val,
                 LoopConfig(steps=12, eval_every=4), run_dir=str(tmp_path))
    best, _ = Checkpointer(str(tmp_path)).restore(_like(prompt, optimizer), "best")
    fresh = Model(tiny_config()).init(jax.random.key(0), std=0.2)
    jax.tree.map(np.testing.assert_array_equal, fresh, frozen)
    total, count = map(sum, zip(*(prompt_loss(model, method)(best.params, fresh, b, None, 0) for b in val)))
    np.testing.assert_allclose(float(total / count), result.best_val_loss, rtol=1e-6)
    assert int(best.step) == result.best_step and not np.allclose(best.params["embeddings"], prompt["embeddings"])


def test_step_compiles_once_per_bucket(tiny_lm, gpt2_tokenizer):
    model, frozen, method, prompt, short = _setup(tiny_lm, gpt2_tokenizer)
    traces = []
    base = prompt_loss(model, method)

    def counted(*args):
        traces.append(args[2]["tokens"].shape)  # runs at trace time only
        return base(*args)

    long = [encode(TEMPLATE, {"word1": "a " * 10 + a, "word2": b}, gpt2_tokenizer, SoftPrompt(length=P)) for a, b in ANTONYM_PAIRS]
    batches, long_batches = Batches(short, 8, 50256), Batches(long, 8, 50256)
    data = lambda s: (batches if s % 3 else long_batches)(s)
    fit(counted, make_optimizer(OptimizerConfig(lr=0.01), prompt), prompt, frozen, data, None, LoopConfig(steps=12))
    assert sorted(set(traces)) == [(8, 16), (8, 24)] and len(traces) == 2, traces


def test_nan_guard_names_the_step_and_keeps_checkpoints(tiny_lm, gpt2_tokenizer, tmp_path):
    model, frozen, method, prompt, examples = _setup(tiny_lm, gpt2_tokenizer)
    good = Batches(examples, 8, 50256)

    def data(step):
        batch = good(step)
        if step == 7:  # a corrupted batch: one NaN loss weight
            batch["target_weight"][0, 0] = np.nan
        return batch

    val = [b for _, b in eval_batches(examples, 8, 50256)]
    optimizer = make_optimizer(OptimizerConfig(lr=0.01), prompt)
    with pytest.raises(NonFiniteLossError, match="non-finite at step 7"):
        fit(prompt_loss(model, method), optimizer, prompt, frozen, data, val,
            LoopConfig(steps=20, eval_every=5, log_every=1), run_dir=str(tmp_path))
    ckpt = Checkpointer(str(tmp_path))
    assert ckpt.latest_step() == 5 and ckpt.best_step() == 5
    for which in ("last", "best"):
        restored, _ = ckpt.restore(_like(prompt, optimizer), which)
        assert np.isfinite(np.asarray(restored.params["embeddings"])).all()


def test_a_non_finite_validation_loss_is_never_best(tiny_lm, gpt2_tokenizer, tmp_path):
    model, frozen, method, prompt, examples = _setup(tiny_lm, gpt2_tokenizer)
    loss_fn = prompt_loss(model, method)

    def val_loss(params, frozen, batch, rng, step):  # validation goes NaN at step 10
        total, count = loss_fn(params, frozen, batch, rng, step)
        return jnp.where(step == 10, jnp.nan, total), count

    optimizer = make_optimizer(OptimizerConfig(lr=0.01), prompt)
    with pytest.raises(NonFiniteLossError, match="validation loss is not finite at step 10"):
        fit(loss_fn, optimizer, prompt, frozen, Batches(examples, 8, 50256),
            [b for _, b in eval_batches(examples, 8, 50256)], LoopConfig(steps=20, eval_every=5),
            run_dir=str(tmp_path), eval_loss_fn=val_loss)
    ckpt = Checkpointer(str(tmp_path))
    assert ckpt.latest_step() == 5 and ckpt.best_step() == 5


class Killed(Exception):
    pass


@pytest.fixture(scope="module")
def resumable(tiny_lm, gpt2_tokenizer, tmp_path_factory):
    """A p-tuning run to 20 steps, uninterrupted: what every interrupted run must end at."""
    model, frozen = tiny_lm
    method = METHODS["ptuning"](length=P, hidden=16)
    prompt = method.init(jax.random.key(0), model, frozen, P)
    examples = _examples(gpt2_tokenizer)
    batches = Batches(examples, 8, 50256, seed=3, shared_len=common_prefix_length(examples))
    val = [b for _, b in eval_batches(examples[:8], 8, 50256)]
    optimizer = make_optimizer(OptimizerConfig(lr=0.002, schedule="cosine", warmup_steps=3), prompt, total_steps=20)
    loss_fn = prompt_loss(model, method)

    def run(run_dir, data=batches, resume=False):
        return fit(loss_fn, optimizer, prompt, frozen, data, val, LoopConfig(steps=20, eval_every=5),
                   run_dir=str(run_dir), resume=resume, seed=5)

    straight = run(tmp_path_factory.mktemp("straight"))
    return run, batches, straight


def _same(a, b):
    jax.tree.map(np.testing.assert_array_equal, a.state.params, b.state.params)
    jax.tree.map(np.testing.assert_array_equal, a.state.opt_state, b.state.opt_state)
    assert a.best_val_loss == b.best_val_loss and a.best_step == b.best_step and a.history == b.history


def test_killed_and_resumed_run_equals_uninterrupted(resumable, tmp_path):
    run, batches, straight = resumable

    def dies_at_13(step):
        if step == 13:
            raise Killed
        return batches(step)

    with pytest.raises(Killed):
        run(tmp_path, dies_at_13)
    _same(run(tmp_path, resume=True), straight)
    assert sorted(os.listdir(tmp_path / "last")) == ["10", "15", "20"]
    assert os.listdir(tmp_path / "best") == [str(straight.best_step)]


@pytest.mark.parametrize("crash", ["in the best write", "before the commit"])
def test_a_kill_between_checkpoint_writes_resumes_exactly(resumable, tmp_path, monkeypatch, crash):
    """A kill after last/15 is written (and best/15, or not): the commit never happened, so resuming
    recomputes step 15 and saves both again; the run ends exactly as if never interrupted."""
    run, _, straight = resumable
    val = {h["step"]: h["val_loss"] for h in straight.history if "val_loss" in h}
    assert val[15] < min(val[5], val[10])  # validation improves at 15: a best/15 is written
    orbax_save, write = ocp.Checkpointer.save, checkpoint.atomic_write

    def save(self, path, *args, **kwargs):
        if crash == "in the best write" and str(path).endswith(os.path.join("best", "15")):
            raise Killed
        return orbax_save(self, path, *args, **kwargs)

    def commit(path, data):
        if crash == "before the commit" and '"last": [5, 10, 15]' in data:
            raise Killed
        return write(path, data)

    monkeypatch.setattr(ocp.Checkpointer, "save", save)
    monkeypatch.setattr(checkpoint, "atomic_write", commit)
    with pytest.raises(Killed):
        run(tmp_path)
    monkeypatch.undo()
    assert os.path.isdir(tmp_path / "last" / "15")  # written, not committed
    assert Checkpointer(str(tmp_path)).latest_step() == 10
    _same(run(tmp_path, resume=True), straight)


def test_a_signal_during_the_steps_commits_that_step_and_resumes_exactly(resumable, tmp_path):
    """A stop taken during step 13 (as the command line's signal watcher takes SIGTERM): step 13 is
    committed as the newest last checkpoint, best stays the best validated step, `Stopped` names
    step 13, and resuming ends exactly as the uninterrupted run."""
    run, batches, straight = resumable

    def signalled_at_12(step):
        if step == 12:
            assert preemption.take(signal.SIGTERM)  # the loop is armed: it takes the signal
        return batches(step)

    with pytest.raises(preemption.Stopped) as stopped:
        run(tmp_path, signalled_at_12)
    assert stopped.value.step == 13 and stopped.value.exit_code == 143 and stopped.value.cause == "SIGTERM"
    ckpt = Checkpointer(str(tmp_path))
    assert ckpt.record == {"last": [5, 10, 13], "best": min((h["val_loss"], h["step"]) for h in straight.history
                                                             if "val_loss" in h and 0 < h["step"] <= 10)[1]}
    assert not preemption.take(signal.SIGTERM)  # outside the steps: the command ends at once
    _same(run(tmp_path, resume=True), straight)


def test_a_best_without_its_last_resumes_exactly(resumable, tmp_path):
    """The reverse state: best/15 on disk, last/15 not, nothing committed at 15."""
    run, batches, straight = resumable

    def dies_at_13(step):
        if step == 13:
            raise Killed
        return batches(step)

    with pytest.raises(Killed):
        run(tmp_path, dies_at_13)
    shutil.copytree(tmp_path / "last" / "10", tmp_path / "best" / "15")
    _same(run(tmp_path, resume=True), straight)


def test_fit_refuses_a_directory_with_checkpoints_unless_resuming(resumable, tmp_path):
    run, _, _ = resumable
    run(tmp_path)
    with pytest.raises(CheckpointError, match="already holds checkpoints"):
        run(tmp_path)


def test_early_stopping(tiny_lm, gpt2_tokenizer):
    model, frozen, method, prompt, examples = _setup(tiny_lm, gpt2_tokenizer)
    # with a zero learning rate validation never improves after the first evaluation (step 2):
    # two more evaluations without a new best (steps 4, 6) stop the run
    result = fit(prompt_loss(model, method), make_optimizer(OptimizerConfig(lr=0.0), prompt), prompt, frozen,
                 Batches(examples, 8, 50256), [b for _, b in eval_batches(examples, 8, 50256)],
                 LoopConfig(steps=200, eval_every=2, patience=2))
    assert result.stopped_early and result.history[-1]["step"] == 6 and result.best_step == 2
