"""A population of prompts in one step: member k is the single run with its seed, rate and initialiser
(the independent reference); a killed population resumes bit-exactly; `--seeds` reports mean ± std."""

from __future__ import annotations

import json
import os

import jax
import numpy as np
import pytest
from conftest import ANTONYM_PAIRS

from jaxprompt.cli.main import main
from jaxprompt.config import LoopConfig, Member, OptimizerConfig, RunOptions
from jaxprompt.data.batches import Batches, eval_batches
from jaxprompt.data.templates import Template, common_prefix_length, encode
from jaxprompt.prompts import METHODS
from jaxprompt.prompts.loss import prompt_loss
from jaxprompt.runs.checkpoint import Checkpointer
from jaxprompt.runs.layout import read_run_info
from jaxprompt.runs.load import load_run
from jaxprompt.training import population as population_module
from jaxprompt.training.loop import fit
from jaxprompt.training.optim import make_optimizer
from jaxprompt.training.population import MemberBatches, initial_state, member_optimizer
from jaxprompt.training.run import train_prompt

TEMPLATE = Template("Here are two {prompt} {word1} and", " {word2}")
P = 4
# longer words put some members' batches in a longer length bucket than others'
LONG = [("aphelion", "perihelion"), ("utopia", "dystopia"), ("synonym", "antonym")]
# rates and initialisers differ between members, and the schedule has a warm-up and a decay
OPTIMIZER = OptimizerConfig(lr=0.05, schedule="cosine", warmup_steps=2)
MEMBERS = (Member(0, 0.05, "vocab_normal"), Member(3, 0.1, "sampled_vocab"))
LOOP = LoopConfig(steps=8, eval_every=4)


def relative_error(a, b) -> float:
    a, b = np.asarray(a, np.float64), np.asarray(b, np.float64)
    return float(np.linalg.norm(a - b) / np.linalg.norm(b))


@pytest.fixture(scope="module")
def setting(tiny_lm, gpt2_tokenizer):
    model, frozen = tiny_lm
    examples = [encode(TEMPLATE, {"word1": a, "word2": b}, gpt2_tokenizer, METHODS["soft"](length=P))
                for a, b in ANTONYM_PAIRS + LONG]
    shared = common_prefix_length(examples)
    prompts = [METHODS["soft"](length=P, init_from=m.init).init(jax.random.key(m.seed), model, frozen, P)
               for m in MEMBERS]
    val = [b for _, b in eval_batches(examples[:8], 8, 50256, shared_len=shared)]
    loss_fn = prompt_loss(model, METHODS["soft"](length=P))

    def run_population(run_dir=None, batches=None, resume=False):
        return fit(loss_fn, member_optimizer(OPTIMIZER, prompts[0], LOOP.steps, MEMBERS[0].lr), None, frozen,
                   batches or MemberBatches(examples, 8, 50256, [m.seed for m in MEMBERS], shared), val, LOOP,
                   run_dir=run_dir, resume=resume,
                   population=initial_state(prompts, MEMBERS, OPTIMIZER, LOOP.steps))

    return frozen, examples, shared, prompts, val, loss_fn, run_population


@pytest.fixture(scope="module")
def straight(setting, tmp_path_factory):
    return setting[-1](str(tmp_path_factory.mktemp("population")))


def test_every_member_is_the_single_run_with_its_seed_rate_and_initialiser(setting, straight):
    """Member 1 differs from member 0 in seed, rate and initialiser; the reference is the single run
    with those (a `--seeds` run's member against `jaxprompt train --seed`: the tests below)."""
    frozen, examples, shared, prompts, val, loss_fn, _ = setting
    for k, m in list(enumerate(MEMBERS))[1:]:
        single = fit(loss_fn, make_optimizer(OPTIMIZER.replace(lr=m.lr), prompts[k], LOOP.steps), prompts[k], frozen,
                     Batches(examples, 8, 50256, seed=m.seed, shared_len=shared), val, LOOP, seed=m.seed)
        # The first update is bit-identical; gradients then differ in float32 rounding (vmapped
        # fusions sum in another order: 1e-7 relative), which Adam's m / sqrt(v) amplifies where a
        # coordinate's gradient changes sign, in proportion to the rate. Measured over these 8
        # steps: 4e-7 (lr 0.05), 6e-7 (lr 0.1); 8e-8 at lr 0.01, 1.2e-6 at lr 0.2.
        assert relative_error(straight.state.params["embeddings"][k], single.state.params["embeddings"]) < 1e-6
        assert relative_error(straight.best_state.params["embeddings"][k], single.state.params["embeddings"]) < 1e-6
        assert straight.best_step[k] == single.best_step
        np.testing.assert_allclose(straight.best_val_loss[k], single.best_val_loss, rtol=1e-6)
        val_losses = [h["val_loss"] for h in single.history if "val_loss" in h]
        np.testing.assert_allclose([h["val_loss"][k] for h in straight.history if "val_loss" in h], val_losses,
                                   rtol=1e-6)
    assert len({round(v, 3) for v in straight.best_val_loss}) == len(MEMBERS)  # the members differ


class Killed(Exception):
    pass


def test_a_killed_population_resumes_bit_exactly(setting, straight, tmp_path):
    *_, run_population = setting
    shared = setting[2]
    batches = MemberBatches(setting[1], 8, 50256, [m.seed for m in MEMBERS], shared)

    def dies_at_6(step):
        if step == 6:
            raise Killed
        return batches(step)

    with pytest.raises(Killed):
        run_population(str(tmp_path), dies_at_6)
    assert Checkpointer(str(tmp_path)).latest_step() == 4
    resumed = run_population(str(tmp_path), resume=True)
    for a, b in ((resumed.state, straight.state), (resumed.best_state, straight.best_state)):
        jax.tree.map(np.testing.assert_array_equal, a, b)
    assert (resumed.best_val_loss, resumed.best_step, resumed.history) == \
        (straight.best_val_loss, straight.best_step, straight.history)


# ---- a `--seeds` run end to end --------------------------------------------------------------------

# seeds_run: conftest's `jaxprompt train --seeds 2` and its single-seed reference


def test_seeds_reports_mean_and_std_of_every_metric(seeds_run):
    population, seed1, printed = seeds_run
    results = json.load(open(os.path.join(population, "results.json")))
    single = json.load(open(os.path.join(seed1, "results.json")))["results"][0]
    written, learned = results["results"]
    members = [[r["loss"] for r in m["results"]] for m in results["members"]]
    assert [m["seed"] for m in results["members"]] == [0, 1] and written["members"] == learned["members"] == 2
    np.testing.assert_allclose(learned["loss"], np.mean([m[1] for m in members]), rtol=1e-12)
    np.testing.assert_allclose(learned["loss_std"], np.std([m[1] for m in members], ddof=1), rtol=1e-12)
    assert learned["loss_std"] > 0 and written["loss_std"] == 0.0 and written["loss"] == members[1][0]
    # member 1 reports what the run of seed 1 alone reports
    np.testing.assert_allclose(members[1][1], single["loss"], rtol=1e-5)
    assert results["members"][1]["results"][1]["exact_match"] == single["exact_match"]
    row = next(line for line in printed.splitlines() if line.startswith("learned"))
    assert f"{learned['loss']:.4f} ± {learned['loss_std']:.4f}" in row
    assert f"{learned['exact_match']:.4f} ± {learned['exact_match_std']:.4f}" in row


def test_member_prompt_is_the_single_runs(seeds_run):
    population, seed1, _ = seeds_run
    _, mine, info = load_run(population, cache=False, member=1)
    _, theirs, _ = load_run(seed1, cache=False)
    assert len(info["members"]) == 2 and info["config"].seeds == 2
    assert relative_error(mine["embeddings"], theirs["embeddings"]) < 1e-6


def test_member_selection_and_its_range(seeds_run, capsys):
    population, seed1, _ = seeds_run
    assert main(["eval", population, "--member", "1", "--examples", "8", "--no-baseline"]) == 0
    assert "learned: soft P=3 (best, member 1)" in capsys.readouterr().out
    for argv, message in (
            (["eval", population, "--member", "2"], f"--member 2: {population} trained 2 prompt(s); use 0..1"),
            (["generate", population, "--text", "hot"], "trained 2 prompts (--seeds 2): choose one with --member 0..1"),
            (["export", population, "--to", "plain", "x"], "choose one with --member 0..1"),
            (["inspect", seed1, "--member", "1"], "trained 1 prompt(s); use 0 (or leave --member out)")):
        assert main(argv) == 2
        err = capsys.readouterr().err.strip()
        assert len(err.splitlines()) == 1 and message in err, err
    assert main(["eval", population, "--examples", "8"]) == 0  # every member: mean ± std
    assert "over 2 members" in capsys.readouterr().out


def test_a_killed_seeds_run_resumes_bit_exactly(seeds_run, tmp_path, monkeypatch):
    population, _, _ = seeds_run
    run = str(tmp_path / "run")
    called = MemberBatches.__call__

    def dies_at_3(self, step):
        if step == 3:
            raise Killed
        return called(self, step)

    monkeypatch.setattr(population_module.MemberBatches, "__call__", dies_at_3)
    options = RunOptions(out=run, progress=False, cache=False)
    with pytest.raises(Killed):
        train_prompt(read_run_info(population)["config"], options, log=lambda *a: None)
    monkeypatch.undo()
    assert Checkpointer(run).latest_step() == 2
    train_prompt(None, options.replace(resume=True), log=lambda *a: None)
    for which in ("last", "best"):
        jax.tree.map(np.testing.assert_array_equal, load_run(run, which, cache=False)[1],
                     load_run(population, which, cache=False)[1])
    results = [json.load(open(os.path.join(d, "results.json"))) for d in (run, population)]
    assert results[0]["results"] == results[1]["results"] and results[0]["members"] == results[1]["members"]
    # every line and value of metrics.jsonl, but the wall-clock speed (tokens/s), which no two runs share
    computed = [[{k: v for k, v in json.loads(line).items() if k != "tokens_per_s"}
                 for line in open(os.path.join(d, "metrics.jsonl"))] for d in (run, population)]
    assert computed[0] == computed[1]
    assert [("tokens_per_s" in json.loads(line)) for line in open(os.path.join(run, "metrics.jsonl"))] == \
        [("train_loss" in h) for h in computed[0]]  # the resumed run keeps the speeds of the steps before it
