"""The run directory's run.json: every format this jaxprompt ever wrote still reads, as today's settings.

The literal run.json below is what jaxprompt wrote before the method settings took the methods'
own names (format 1: no "format" key; `prompt_length`, `init`, `encoder_hidden`,
`prefix_top_layers`, `prefix_reparam`, `adapter_layers`)."""

from __future__ import annotations

import json

import pytest

from jaxprompt.config import TrainConfig
from jaxprompt.prompts import AdaptionPrompt
from jaxprompt.runs.layout import FORMAT, RunError, read_run_info, run_info

FORMAT_1 = {
    "config": {"tasks": ["antonyms"], "model": "gpt2", "dtype": "float32", "seed": 0, "split_seed": None, "seeds": 1,
               "baseline": True, "remat": False, "shared_prefix": True,
               "method": {"name": "adaption", "prompt_length": 4, "init": "vocab_normal", "init_text": None,
                          "encoder": "mlp", "encoder_hidden": 128, "prefix_top_layers": None, "prefix_reparam": None,
                          "tau_end": 0.05, "adapter_layers": 2},
               "optimizer": {"lr": 0.1, "name": "adamw", "schedule": "constant", "warmup_steps": 0,
                             "weight_decay": 0.0, "clip_norm": 1.0, "part_lr": [], "frozen_parts": []},
               "loop": {"steps": 3, "epochs": 3.0, "eval_every": 100, "patience": None, "keep": 3, "log_every": 10},
               "data": {"batch_size": 32, "accumulate": 1, "train_examples": None, "eval_examples": None}},
    "model_dir": "gpt2", "tasks": [], "steps": 3, "n_virtual": 4,
    "method": {"name": "adaption", "length": 4, "top_layers": 2}, "jaxprompt": "0.1.0",
}


def _write(tmp_path, info: dict) -> str:
    (tmp_path / "run.json").write_text(json.dumps(info))
    return str(tmp_path)


def test_a_run_json_of_the_first_format_reads_as_todays_settings(tmp_path):
    config = read_run_info(_write(tmp_path, FORMAT_1))["config"]
    assert config == TrainConfig.from_flags(method="adaption", adapter_layers=2, prompt_length=4, steps=3,
                                            task=("antonyms",), model="gpt2")
    assert (config.method.length, config.method.top_layers, config.method.init_from) == (4, 2, None)  # no init


def test_first_format_prefix_settings_and_p_tuning_width(tmp_path):
    method = {**FORMAT_1["config"]["method"], "name": "prefix", "adapter_layers": None, "prefix_top_layers": 1,
              "prefix_reparam": 16}
    config = read_run_info(_write(tmp_path, {**FORMAT_1, "config": {**FORMAT_1["config"], "method": method}}))["config"]
    assert (config.method.name, config.method.top_layers, config.method.reparam_hidden) == ("prefix", 1, 16)
    method = {**method, "name": "ptuning", "prefix_top_layers": None, "prefix_reparam": None, "encoder_hidden": 8,
              "init": "uniform"}
    config = read_run_info(_write(tmp_path, {**FORMAT_1, "config": {**FORMAT_1["config"], "method": method}}))["config"]
    assert (config.method.hidden, config.method.init_from) == (8, "uniform")


def test_todays_format_round_trips_and_a_newer_one_is_refused(tmp_path):
    first = read_run_info(_write(tmp_path, FORMAT_1))
    info = json.loads(json.dumps(run_info(first["config"], "gpt2", [], 3, 4, AdaptionPrompt(length=4, top_layers=2))))
    assert info["format"] == FORMAT and info["config"]["method"]["top_layers"] == 2
    assert read_run_info(_write(tmp_path, info))["config"] == first["config"]
    with pytest.raises(RunError, match=f"has format {FORMAT + 1}; this jaxprompt reads formats 1 to {FORMAT}"):
        read_run_info(_write(tmp_path, {**info, "format": FORMAT + 1}))
    missing = {**FORMAT_1, "config": {**FORMAT_1["config"], "method": {
        k: v for k, v in FORMAT_1["config"]["method"].items() if k != "encoder_hidden"}}}
    with pytest.raises(RunError, match="config.method lacks the setting 'hidden'"):
        read_run_info(_write(tmp_path, missing))


def test_a_second_format_run_reads_as_it_ran(tmp_path):
    """Format 2 stored `--init vocab_normal` for every method; prefix tuning and PEZ drew random word
    tokens whatever it said (prefix tuning started from a text with --init text), adaption prompts
    had no init; the settings added since took the one value every run had."""
    import dataclasses

    from jaxprompt.config import MethodConfig

    fields = {f.name: f.default for f in dataclasses.fields(MethodConfig)}
    old = {k: v for k, v in fields.items() if k not in ("init_scale", "tau_start", "init_logit", "metric")}
    for name, init, now in (("prefix", "vocab_normal", "sampled_vocab"), ("prefix", "text", "text"),
                            ("pez", "vocab_normal", "sampled_vocab"), ("adaption", "vocab_normal", None),
                            ("soft", "uniform", "uniform")):
        method = {**old, "name": name, "init_from": init}
        spec = {"name": "prefix", "length": 4, "top_layers": None, "reparam_hidden": None, "init_ids": [3] * (init == "text")}
        info = {**FORMAT_1, "format": 2, "config": {**FORMAT_1["config"], "method": method},
                "method": spec if name == "prefix" else FORMAT_1["method"]}
        read = read_run_info(_write(tmp_path, info))
        assert read["config"].method.init_from == now, name
        assert (read["config"].method.tau_start, read["config"].method.metric) == (1.0, "cosine")
        if name == "prefix":
            assert read["method"]["init_from"] == now
