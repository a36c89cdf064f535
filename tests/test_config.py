"""Settings: declared once, validated once, stored nested and read back strictly."""

from __future__ import annotations

import dataclasses
import math

import pytest

from jaxprompt.config import DataConfig, LoopConfig, MethodConfig, OptimizerConfig, RunOptions, TrainConfig
from jaxprompt.settings import SettingError, from_dict, leaves, parse_text, to_dict


def test_every_setting_is_declared_with_help_and_a_unique_flat_name():
    flats = [flat for _, flat, *_ in leaves(TrainConfig)] + [flat for _, flat, *_ in leaves(RunOptions)]
    assert len(flats) == len(set(flats))
    for cls in (TrainConfig, RunOptions):
        for _, flat, f, _, _ in leaves(cls):
            assert f.metadata.get("help"), flat
    # one source of truth: the optimizer's and the loop's settings exist once, nowhere else
    assert {f.name for f in dataclasses.fields(TrainConfig)} & {f.name for f in dataclasses.fields(OptimizerConfig)} \
        == set()
    assert [p for p, flat, *_ in leaves(TrainConfig) if flat == "lr"] == [("optimizer", "lr")]


def test_flat_names_build_the_nested_config():
    config = TrainConfig.from_flags(lr=0.3, steps=50, method="prefix", prefix_reparam=64, task=("a", "b"))
    assert config.optimizer.lr == 0.3 and config.loop.steps == 50 and config.method.name == "prefix"
    assert config.method.reparam_hidden == 64 and config.tasks == ("a", "b")
    changed = config.replace(batch_size=8, model="m")
    assert changed.data.batch_size == 8 and changed.model == "m" and changed.optimizer == config.optimizer
    with pytest.raises(SettingError, match="unknown setting 'learning_rate'"):
        config.replace(learning_rate=1.0)


BAD = [  # (flat settings, the message)
    (dict(batch_size=0), "--batch-size 0: must be an integer >= 1"),
    (dict(batch_size=-4), "--batch-size -4: must be an integer >= 1"),
    (dict(steps=0), "--steps 0: must be an integer >= 1 (or none)"),
    (dict(steps=-5), "--steps -5: must be an integer >= 1 (or none)"),
    (dict(epochs=math.nan), "--epochs nan: must be a number > 0"),
    (dict(eval_every=0), "--eval-every 0: must be an integer >= 1"),
    (dict(train_examples=0), "--train-examples 0: must be an integer >= 1 (or none)"),
    (dict(train_examples=-3), "--train-examples -3: must be an integer >= 1 (or none)"),
    (dict(clip_norm=-1.0), "--clip-norm -1.0: must be a number > 0 (or none)"),
    (dict(lr=-0.1), "--lr -0.1: must be a number >= 0"),
    (dict(lr=math.nan), "--lr nan: must be a number >= 0"),
    (dict(lr=math.inf), "--lr inf: must be a number >= 0"),
    (dict(tau_end=0.0), "--tau-end 0.0: must be a number in (0, 1]"),
    (dict(encoder_hidden=0), "--encoder-hidden 0: must be an integer >= 1"),
    (dict(method="lora"), "--method 'lora': must be one of soft, ptuning, prefix, relaxed, pez"),
    (dict(batch_size=30, accumulate=4), "--batch-size 30 is not divisible by --accumulate 4"),
    (dict(prefix_reparam=8), "--prefix-reparam applies to --method prefix only"),
    (dict(init_text="hi"), "--init-text needs --init text"),
    (dict(part_lr=(("encoder", -1.0),)), "--part-lr encoder=-1.0: must be a list of part=rate each >= 0"),
    (dict(steps=True), "--steps True: must be an integer >= 1 (or none)"),
    (dict(task=()), "--task: give at least one task"),
]


@pytest.mark.parametrize("values,message", BAD, ids=[m.split(":")[0] for _, m in BAD])
def test_a_bad_setting_is_one_line_naming_it_and_its_range(values, message):
    with pytest.raises(SettingError) as info:
        TrainConfig.from_flags(**values)
    assert str(info.value) == message or str(info.value).startswith(message), str(info.value)


def test_run_options_exclude_resume_with_overwrite():
    with pytest.raises(SettingError, match="--resume and --overwrite exclude each other"):
        RunOptions(resume=True, overwrite=True)


def test_the_stored_form_round_trips_and_is_read_strictly():
    config = TrainConfig.from_flags(lr=0.25, part_lr=(("encoder", 1e-3),), frozen_parts=("inputs",), method="ptuning")
    stored = to_dict(config)
    assert stored["optimizer"]["part_lr"] == [["encoder", 1e-3]] and stored["loop"]["steps"] is None
    assert from_dict(TrainConfig, stored) == config
    missing = {**stored, "optimizer": {k: v for k, v in stored["optimizer"].items() if k != "lr"}}
    with pytest.raises(SettingError, match="config.optimizer lacks the setting 'lr'"):
        from_dict(TrainConfig, missing)
    with pytest.raises(SettingError, match="config has an unknown setting 'colour'"):
        from_dict(TrainConfig, {**stored, "colour": "red"})
    with pytest.raises(SettingError, match="--batch-size 0"):
        from_dict(TrainConfig, {**stored, "data": {**stored["data"], "batch_size": 0}})


def test_flag_text_is_read_by_type():
    hint = lambda cls, name: next(h for _, flat, _, h, _ in leaves(cls) if flat == name)
    assert parse_text("none", hint(OptimizerConfig, "clip_norm")) is None
    assert parse_text("encoder=1e-3, inputs=0.3", hint(OptimizerConfig, "part_lr")) == (("encoder", 1e-3),
                                                                                          ("inputs", 0.3))
    assert parse_text("a.toml,b", hint(TrainConfig, "task")) == ("a.toml", "b")
    assert parse_text("7", hint(LoopConfig, "steps")) == 7
    with pytest.raises(ValueError):
        parse_text("encoder", hint(OptimizerConfig, "part_lr"))
    assert DataConfig().batch_size == 32 and MethodConfig().name == "soft"


def test_method_settings_take_the_methods_names_and_keep_their_flags():
    """`--prompt-length` is `length`, `--init` is `init_from`, `--encoder-hidden` is `hidden`,
    `--prefix-reparam` is `reparam_hidden`; `--prefix-top-layers` and `--adapter-layers` are both
    `top_layers`, and a message names the flag of the method in use."""
    config = TrainConfig.from_flags(method="ptuning", prompt_length=7, init="uniform", encoder_hidden=16)
    assert (config.method.length, config.method.init_from, config.method.hidden) == (7, "uniform", 16)
    assert TrainConfig.from_flags(method="adaption", adapter_layers=2).method.top_layers == 2
    assert TrainConfig.from_flags(method="prefix", prefix_top_layers=1).method.top_layers == 1
    with pytest.raises(SettingError, match="^--adapter-layers 0: must be an integer >= 1"):
        TrainConfig.from_flags(method="adaption", adapter_layers=0)
    with pytest.raises(SettingError, match="^--prefix-top-layers 0: must be an integer >= 1"):
        TrainConfig.from_flags(method="prefix", prefix_top_layers=0)
    with pytest.raises(SettingError, match="^--prefix-top-layers applies to --method prefix or adaption only"):
        TrainConfig.from_flags(adapter_layers=2)
