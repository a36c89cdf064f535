"""A run end to end: the numbers it reports (against transformers), and a run directory that is never
lost or mixed: refused without --resume/--overwrite, locked, resumed only as stored."""

from __future__ import annotations

import json
import os
import shutil

import jax
import numpy as np
import pytest

from conftest import snapshot
from jaxprompt.config import RunOptions, SettingError, TrainConfig
from jaxprompt.files import DirectoryLock, LockedError
from jaxprompt.run import RunError, load_run, read_run_info, train_prompt
from jaxprompt.tasks import BUILTIN

SMALL = dict(steps=6, prompt_length=3, batch_size=8, eval_examples=8, eval_every=3, lr=0.05)


@pytest.fixture(scope="module")
def run(tiny_model_dir, tmp_path_factory):
    config = TrainConfig.from_flags(model=tiny_model_dir, **SMALL)
    out = str(tmp_path_factory.mktemp("runs") / "run")
    train_prompt(config, RunOptions(out=out, progress=False), log=lambda *a: None)
    return config, out


def test_the_reported_losses_are_what_transformers_computes(run, tiny_model_dir, gpt2_tokenizer):
    """results.json's written and learned test losses, recomputed in PyTorch from the checkpoint's
    prompt (inserted by hand as input embeddings) on the same test rows."""
    torch = pytest.importorskip("torch")
    from transformers import AutoModelForCausalLM

    _, out = run
    results = {r["label"].split(":")[0]: r for r in json.load(open(os.path.join(out, "results.json")))["results"]}
    _, prompt, _ = load_run(out, cache=False)
    rows = BUILTIN["antonyms"].load(seed=0)["test"][:8]
    hf = AutoModelForCausalLM.from_pretrained(tiny_model_dir).eval()
    wte = hf.get_input_embeddings().weight

    def mean_nll(pieces_of):
        total, count = 0.0, 0
        for r in rows:
            embeds, target = [], gpt2_tokenizer.encode(" " + r["word2"])
            for piece in pieces_of(r):
                embeds.append(torch.tensor(np.asarray(piece)) if not isinstance(piece, str)
                              else wte[torch.tensor(gpt2_tokenizer.encode(piece))])
            embeds.append(wte[torch.tensor(target)])
            with torch.no_grad():
                logits = hf(inputs_embeds=torch.cat(embeds)[None]).logits[0]
            log_probs = torch.log_softmax(logits[-len(target) - 1:-1].double(), -1)
            total -= float(log_probs[torch.arange(len(target)), torch.tensor(target)].sum())
            count += len(target)
        return total / count

    written = mean_nll(lambda r: [f"Here are two antonyms {r['word1']} and"])
    learned = mean_nll(lambda r: ["Here are two", prompt["embeddings"], f" {r['word1']} and"])
    assert results["written"]["n"] == results["learned"]["n"] == 8
    np.testing.assert_allclose(results["written"]["loss"], written, rtol=1e-4)
    np.testing.assert_allclose(results["learned"]["loss"], learned, rtol=1e-4)
    assert abs(written - learned) > 1e-3
    # the written prompt's validation loss (curve.png's horizontal line) on the run's 8 validation rows
    rows = BUILTIN["antonyms"].load(seed=0)["validation"][:8]
    written_val = json.load(open(os.path.join(out, "results.json")))["written_val_loss"]["written"]
    np.testing.assert_allclose(written_val, mean_nll(lambda r: [f"Here are two antonyms {r['word1']} and"]), rtol=1e-4)


def test_an_existing_run_is_never_touched_without_resume_or_overwrite(run):
    config, out = run
    before = snapshot(out)
    with pytest.raises(RunError, match="already holds a run: pass --resume to continue it, or --overwrite"):
        train_prompt(config, RunOptions(out=out, progress=False))
    with pytest.raises(RunError, match=r"--resume uses the settings stored in .*: --lr 0.2 differs from the stored 0.05"):
        train_prompt(config.replace(lr=0.2), RunOptions(out=out, resume=True, progress=False))
    with DirectoryLock(out):  # another process training into it
        with pytest.raises(LockedError, match="in use by another jaxprompt process"):
            train_prompt(config, RunOptions(out=out, resume=True, progress=False))
    assert snapshot(out) == before


def test_out_must_be_a_run_or_an_empty_directory(run, tmp_path):
    config, _ = run
    (tmp_path / "file").write_text("x")
    with pytest.raises(RunError, match="--out .*file is a file, not a directory"):
        train_prompt(config, RunOptions(out=str(tmp_path / "file")))
    (tmp_path / "mine").mkdir()
    (tmp_path / "mine" / "notes.txt").write_text("keep me")
    for overwrite in (False, True):
        with pytest.raises(RunError, match="is a directory of other files, not a jaxprompt run"):
            train_prompt(config, RunOptions(out=str(tmp_path / "mine"), overwrite=overwrite))
    assert os.listdir(tmp_path / "mine") == ["notes.txt"]
    with pytest.raises(RunError, match="nothing to resume"):
        train_prompt(config, RunOptions(out=str(tmp_path / "new"), resume=True))


def test_overwrite_replaces_the_run_as_a_whole(run, tmp_path):
    """No part of the old run survives: an old best checkpoint at a step the new run never reaches
    would otherwise be loaded as the new run's result."""
    config, out = run
    copy = str(tmp_path / "run")
    shutil.copytree(out, copy)
    old_best = json.load(open(os.path.join(copy, "checkpoints.json")))["best"]
    result = train_prompt(config.replace(steps=2, eval_every=2), RunOptions(out=copy, overwrite=True, progress=False),
                          log=lambda *a: None)
    record = json.load(open(os.path.join(copy, "checkpoints.json")))
    assert record == {"last": [2], "best": 2} and old_best != 2
    assert sorted(os.listdir(os.path.join(copy, "best"))) == ["2"]
    assert [h["step"] for h in result.history] == [0, 2, 2]  # val at 0, train and val at 2: nothing older
    assert read_run_info(copy)["config"].loop.steps == 2


def test_resume_continues_with_the_stored_settings(run, tmp_path):
    """Resuming a finished run changes nothing; resuming with `config=None` uses run.json's."""
    config, out = run
    copy = str(tmp_path / "run")
    shutil.copytree(out, copy)
    result = train_prompt(None, RunOptions(out=copy, resume=True, progress=False), log=lambda *a: None)
    assert result.best_step == json.load(open(os.path.join(out, "results.json")))["best_step"]
    before, after = (json.load(open(os.path.join(d, "results.json")))["results"] for d in (out, copy))
    assert before == after


def test_settings_out_of_range_never_start_a_run(run, tmp_path):
    config, _ = run
    with pytest.raises(SettingError, match="--devices 64: only 1 local device"):
        train_prompt(config, RunOptions(out=str(tmp_path / "x"), devices=64))
    with pytest.raises(SettingError, match="--prefix-top-layers 5: the model has 2 layers; use 1..2"):
        train_prompt(config.replace(method="prefix", prefix_top_layers=5), RunOptions(out=str(tmp_path / "y")))
    assert not (tmp_path / "x").exists()
    assert jax.device_count() == 1


def test_the_curve_draws_the_written_prompt_beside_every_member(tmp_path, monkeypatch):
    """curve.png of a 2-member population: each member's validation losses thin, their mean bold,
    the written prompt's validation loss a horizontal line; the PNG reads back."""
    import matplotlib.image
    import matplotlib.pyplot as plt

    from jaxprompt.run import plot_curve

    figures = []
    close = plt.close
    monkeypatch.setattr(plt, "close", lambda fig=None: (figures.append(fig), close(fig)))
    history = [{"step": 0, "val_loss": [5.0, 5.2]}, {"step": 2, "train_loss": [4.0, 4.4], "grad_norm": [1.0, 1.0]},
               {"step": 2, "val_loss": [4.5, 4.1]}, {"step": 4, "train_loss": [3.0, 3.6], "grad_norm": [1.0, 1.0]},
               {"step": 4, "val_loss": [4.0, 3.8]}]
    path = str(tmp_path / "curve.png")
    plot_curve(history, path, written={"written": 4.6})
    (fig,) = figures
    lines = {tuple(np.round(line.get_ydata(), 6)): line for line in fig.axes[0].get_lines()}
    val_mean, member0, member1 = lines[(5.1, 4.3, 3.9)], lines[(5.0, 4.5, 4.0)], lines[(5.2, 4.1, 3.8)]
    assert val_mean.get_linewidth() > 2 * member0.get_linewidth() == 2 * member1.get_linewidth()
    assert list(val_mean.get_xdata()) == [0, 2, 4]
    assert (4.2, 3.3) in lines  # the training mean
    written = lines[(4.6, 4.6)]
    assert list(written.get_xdata()) == [0, 1] and "written" in written.get_label()  # axes-wide
    assert matplotlib.image.imread(path).shape[:2] == (400, 600)
