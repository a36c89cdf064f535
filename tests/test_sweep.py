"""The Optuna length sweep: its answer is the trial whose run validated best, read from the runs."""

from __future__ import annotations

import json
import os

import numpy as np

from jaxprompt.config import RunOptions, TrainConfig
from jaxprompt.training.sweep import sweep_prompt_length


def test_the_sweep_reports_the_length_whose_run_validated_best(tiny_model_dir, tmp_path):
    base = TrainConfig.from_flags(model=tiny_model_dir, steps=4, eval_every=2, batch_size=8, eval_examples=8,
                                  lr=0.5)
    best, table = sweep_prompt_length(base, (1, 4), trials=2, sweep_dir=str(tmp_path),
                                      options=RunOptions(progress=False, cache=False))
    validated = {}
    for name in os.listdir(tmp_path):  # trial<i>-P<length>: each a complete run directory
        history = [json.loads(line) for line in open(tmp_path / name / "metrics.jsonl")]
        validated[int(name.split("-P")[1])] = min(h["val_loss"] for h in history if "val_loss" in h and h["step"])
        assert json.load(open(tmp_path / name / "run.json"))["config"]["method"]["length"] == \
            int(name.split("-P")[1])
    assert sorted(validated) == [1, 4] and validated[1] != validated[4]
    assert best == min(validated, key=validated.get)
    header, *rows = (line.split() for line in table.splitlines())
    length, val = header.index("length"), header.index("val_loss")
    assert len(rows) == 2 and all(f"{validated[int(r[length])]:.4f}" == r[val] for r in rows)


def test_trials_of_one_length_train_as_a_population_with_the_answers_of_single_runs(tiny_model_dir, tmp_path):
    """Two trials (rate and seed both differ) of one length: one population run, each member's
    validation loss the one its trial's own run gives (the trials run one at a time, the reference)."""
    base = TrainConfig.from_flags(model=tiny_model_dir, steps=4, eval_every=2, batch_size=8, eval_examples=8,
                                  prompt_length=2)
    options = RunOptions(progress=False, cache=False)
    sweeps = {}
    for population in (2, 1):
        sweep_dir = tmp_path / f"population{population}"
        sweep_prompt_length(base, (2,), trials=2, sweep_dir=str(sweep_dir), options=options, lrs=(0.05, 0.3),
                            seeds=(5,), population=population)
        runs = sorted(os.listdir(sweep_dir))
        rows = {}
        for name in runs:
            info = json.load(open(sweep_dir / name / "run.json"))
            history = [json.loads(line) for line in open(sweep_dir / name / "metrics.jsonl")]
            members = info.get("members") or [{"seed": info["config"]["seed"], "lr": info["config"]["optimizer"]["lr"]}]
            for k, m in enumerate(members):
                vals = [h["val_loss"][k] if "members" in info else h["val_loss"] for h in history if "val_loss" in h]
                rows[(m["seed"], m["lr"])] = vals
        sweeps[population] = runs, rows
    assert len(sweeps[2][0]) == 1 and sweeps[2][0][0].startswith("trials") and len(sweeps[1][0]) == 2
    assert sorted(sweeps[2][1]) == sorted(sweeps[1][1]) == [(5, 0.05), (5, 0.3)]
    for key, vals in sweeps[1][1].items():
        np.testing.assert_allclose(sweeps[2][1][key], vals, rtol=1e-6)
