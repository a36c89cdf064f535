"""The Optuna length sweep: its answer is the trial whose run validated best, read from the runs."""

from __future__ import annotations

import json
import os

from jaxprompt.config import RunOptions, TrainConfig
from jaxprompt.sweep import sweep_prompt_length


def test_the_sweep_reports_the_length_whose_run_validated_best(tiny_model_dir, tmp_path):
    base = TrainConfig.from_flags(model=tiny_model_dir, steps=4, eval_every=2, batch_size=8, eval_examples=8,
                                  lr=0.5)
    best, table = sweep_prompt_length(base, (1, 4), trials=2, sweep_dir=str(tmp_path),
                                      options=RunOptions(progress=False, cache=False))
    validated = {}
    for name in os.listdir(tmp_path):  # trial<i>-P<length>: each a complete run directory
        history = [json.loads(line) for line in open(tmp_path / name / "metrics.jsonl")]
        validated[int(name.split("-P")[1])] = min(h["val_loss"] for h in history if "val_loss" in h and h["step"])
        assert json.load(open(tmp_path / name / "run.json"))["config"]["method"]["prompt_length"] == \
            int(name.split("-P")[1])
    assert sorted(validated) == [1, 4] and validated[1] != validated[4]
    assert best == min(validated, key=validated.get)
    rows = table.splitlines()[1:]
    assert len(rows) == 2 and all(f"{validated[int(r.split()[1])]:.4f}" == r.split()[2] for r in rows)
