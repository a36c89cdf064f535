"""A run end to end: the numbers it reports (against transformers), and a run directory that is never
lost or mixed: refused without --resume/--overwrite, locked, resumed only as stored."""

from __future__ import annotations

import dataclasses
import json
import os
import shutil

import jax
import numpy as np
import pytest
from conftest import snapshot

from jaxprompt.config import RunOptions, TrainConfig
from jaxprompt.data.tasks import BUILTIN
from jaxprompt.files import DirectoryLock, LockedError
from jaxprompt.runs.layout import RunError, read_run_info
from jaxprompt.runs.load import load_run
from jaxprompt.settings import SettingError
from jaxprompt.training.run import train_prompt

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


def test_every_method_setting_reaches_the_method_under_its_own_name(gpt2_tokenizer):
    """What each method gets from the settings (as the hand-written mapping before gave it)."""
    from jaxprompt.prompts import (
        AdaptionPrompt,
        PrefixTuning,
        ProjectedPrompt,
        PTuning,
        RelaxedPrompt,
        SoftPrompt,
        method_from_config,
    )

    task = BUILTIN["antonyms"]
    common = dict(prompt_length=4, init="uniform")
    cases = [
        (dict(method="soft", **common), SoftPrompt(length=4, init_from="uniform")),
        (dict(method="ptuning", encoder="lstm", encoder_hidden=8, **common),
         PTuning(length=4, init_from="uniform", encoder="lstm", hidden=8)),
        (dict(method="prefix", prompt_length=4, prefix_top_layers=1, prefix_reparam=16),
         PrefixTuning(length=4, top_layers=1, reparam_hidden=16)),
        (dict(method="prefix", prompt_length=4, init="text", init_text="opposite"),
         PrefixTuning(length=4, init_from="text", init_ids=tuple(gpt2_tokenizer.encode(" opposite")))),
        (dict(method="relaxed", tau_start=2.0, tau_end=0.2, init_scale=0.1, **common),
         RelaxedPrompt(length=4, init_from="uniform", init_scale=0.1, tau_start=2.0, tau_end=0.2, anneal_steps=7)),
        (dict(method="pez", prompt_length=4), ProjectedPrompt(length=4, init_from="sampled_vocab")),
        (dict(method="pez", prompt_length=4, pez_metric="l2"), ProjectedPrompt(length=4, metric="l2")),
        (dict(method="pez", **common), ProjectedPrompt(length=4, init_from="uniform")),
        (dict(method="adaption", prompt_length=4, adapter_layers=1), AdaptionPrompt(length=4, top_layers=1)),
    ]
    for flags, expected in cases:
        assert method_from_config(TrainConfig.from_flags(**flags).method, gpt2_tokenizer, task, steps=7) == expected, flags


def test_a_run_json_of_the_first_format_still_loads_and_resumes(run, tmp_path):
    """A run whose run.json has the method settings under their first names (as the previous
    version wrote them, no "format" key) loads the same prompt and resumes to the same results."""
    config, out = run
    copy = str(tmp_path / "run")
    shutil.copytree(out, copy)
    info = json.load(open(os.path.join(copy, "run.json")))
    del info["format"]
    info["config"]["method"] = {"name": "soft", "prompt_length": 3, "init": "vocab_normal", "init_text": None,
                                "encoder": "mlp", "encoder_hidden": 128, "prefix_top_layers": None,
                                "prefix_reparam": None, "tau_end": 0.05, "adapter_layers": None}
    with open(os.path.join(copy, "run.json"), "w") as f:
        json.dump(info, f)
    # the first format wrote every setting's value, the method's default included
    assert config.method.init_from is None and config.method.default_of("init_from") == "vocab_normal"
    assert read_run_info(copy)["config"] == dataclasses.replace(
        config, method=dataclasses.replace(config.method, init_from="vocab_normal"))
    (_, theirs, _), (_, ours, _) = load_run(out), load_run(copy)
    assert jax.tree.all(jax.tree.map(lambda a, b: bool(np.array_equal(a, b)), theirs, ours))
    train_prompt(None, RunOptions(out=copy, resume=True, progress=False), log=lambda *a: None)
    before, after = (json.load(open(os.path.join(d, "results.json")))["results"] for d in (out, copy))
    assert before == after


def test_float16_training_is_refused_in_one_line(run, tmp_path):
    config, _ = run
    with pytest.raises(SettingError, match="--dtype float16 cannot train") as info:
        train_prompt(config.replace(dtype="float16"), RunOptions(out=str(tmp_path / "fp16")))
    assert "\n" not in str(info.value) and not (tmp_path / "fp16").exists()


def test_load_run_learns_the_prompt_shapes_without_running_an_init(run, monkeypatch):
    """Loading a run traces the method's init for its shapes (jax.eval_shape) and never runs it on
    the weights: every call sees abstract tracers, none a concrete array."""
    from jaxprompt.prompts.soft import SoftPrompt

    _, out = run
    calls, real_init = [], SoftPrompt.init

    def spy(self, key, model, frozen, n_virtual):
        calls.append(all(isinstance(x, jax.core.Tracer) for x in jax.tree.leaves(frozen)))
        return real_init(self, key, model, frozen, n_virtual)

    monkeypatch.setattr(SoftPrompt, "init", spy)
    _, prompt, _ = load_run(out, cache=False)
    assert calls and all(calls)
    assert prompt["embeddings"].shape == (3, 32)


def test_the_curve_draws_the_written_prompt_beside_every_member(tmp_path, monkeypatch):
    """curve.png of a 2-member population: each member's validation losses thin, their mean bold,
    the written prompt's validation loss a horizontal line; the PNG reads back."""
    import matplotlib.image
    import matplotlib.pyplot as plt

    from jaxprompt.training.curve import plot_curve

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
