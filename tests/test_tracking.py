"""`--log tensorboard,wandb`: what the trackers hold, read back with their own readers (TensorBoard's
EventAccumulator; W&B's record protocol from its offline run file), against the run's metrics.jsonl
and results.json, the source of truth."""

from __future__ import annotations

import glob
import json
import os
import struct

import numpy as np
import pytest

from jaxprompt.settings import SettingError
from jaxprompt.training.tracking import Trackers


def _metrics(run_dir) -> list[dict]:
    return [json.loads(line) for line in open(os.path.join(run_dir, "metrics.jsonl"))]


def _expected(run_dir) -> dict[str, dict[int, float]]:
    """name -> step -> value, written here from metrics.jsonl and results.json of a 2-member
    population (the names of tracking.py's docstring)."""
    out: dict[str, dict[int, float]] = {}

    def put(name, step, value):
        if isinstance(value, list):
            for k, v in enumerate(value):
                out.setdefault(f"{name}/member{k}", {})[step] = v
            out.setdefault(f"{name}/mean", {})[step] = float(np.mean(value))
        else:
            out.setdefault(name, {})[step] = value

    history = _metrics(run_dir)
    for h in history:
        for key, name in (("train_loss", "train/loss"), ("grad_norm", "train/grad_norm"),
                          ("tokens_per_s", "train/tokens_per_s"), ("val_loss", "val/loss")):
            if key in h:
                put(name, h["step"], h[key])
        for part, rate in h.get("lr", {}).items():
            put(f"train/lr/{part}", h["step"], rate)
    results = json.load(open(os.path.join(run_dir, "results.json")))
    for h in history:
        if "val_loss" in h:
            put("val/written_loss", h["step"], results["written_val_loss"]["written"])
    last = history[-1]["step"]
    written, learned = results["results"]
    for metric in ("loss", "exact_match"):
        put(f"test/written/{metric}", last, written[metric])
        put(f"test/learned/{metric}", last, [m["results"][1][metric] for m in results["members"]])
    return out


@pytest.mark.slow
def test_metrics_jsonl_holds_rates_and_speeds(seeds_run):
    population, _, _ = seeds_run
    info = json.load(open(os.path.join(population, "run.json")))
    train = [h for h in _metrics(population) if "train_loss" in h]
    assert train and all(h["tokens_per_s"] > 0 for h in train)
    # the members' own rates (constant schedule): --lr for both
    assert all(h["lr"] == {"embeddings": [info["config"]["optimizer"]["lr"]] * 2} for h in train)


@pytest.mark.slow
def test_tensorboard_holds_what_metrics_jsonl_holds(seeds_run):
    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

    population, _, _ = seeds_run
    events = EventAccumulator(os.path.join(population, "tensorboard"), size_guidance={"scalars": 0, "tensors": 0})
    events.Reload()
    expected = _expected(population)
    assert set(events.Tags()["scalars"]) == set(expected)
    for name, values in expected.items():
        got = {e.step: e.value for e in events.Scalars(name)}
        assert got.keys() == values.keys(), name
        np.testing.assert_allclose([got[s] for s in values], list(values.values()), rtol=1e-6, err_msg=name)
    assert "written_loss" in " ".join(events.Tags()["scalars"])
    settings = events.Tensors("settings/text_summary")[0].tensor_proto.string_val[0].decode()
    stored = json.load(open(os.path.join(population, "run.json")))
    assert json.loads(settings.strip().strip("`")) == stored


def _wandb_records(path: str) -> list:
    """The records of a W&B run file: a 7-byte header, then LevelDB's log format (32 KiB blocks of
    chunks, each a 7-byte header: checksum, length, type 1 full / 2 first / 3 middle / 4 last) of
    `wandb_internal_pb2.Record` protocol buffers."""
    from wandb.proto import wandb_internal_pb2

    data = open(path, "rb").read()
    assert data[:4] == b":W&B"
    pos, pending, records = 7, b"", []
    while pos + 7 <= len(data):
        if 32768 - pos % 32768 < 7:  # a block's tail too short for a header is padding
            pos += 32768 - pos % 32768
            continue
        _, length, kind = struct.unpack("<IHB", data[pos:pos + 7])
        pending += data[pos + 7:pos + 7 + length]
        pos += 7 + length
        if kind in (1, 4):
            record = wandb_internal_pb2.Record()
            record.ParseFromString(pending)
            records.append(record)
            pending = b""
    return records


@pytest.mark.slow
def test_wandb_offline_run_holds_what_metrics_jsonl_holds(seeds_run):
    population, _, _ = seeds_run
    (path,) = glob.glob(os.path.join(population, "wandb", "offline-run-*", "run-*.wandb"))
    logged: dict[str, dict[int, float]] = {}
    config = None
    for record in _wandb_records(path):
        kind = record.WhichOneof("record_type")
        if kind == "history":
            for item in record.history.item:
                name = "/".join(item.nested_key) if item.nested_key else item.key
                if not name.startswith("_"):
                    logged.setdefault(name, {})[record.history.step.num] = json.loads(item.value_json)
        elif kind == "run":
            assert record.run.display_name == "seeds-run" and record.run.project == "jaxprompt"
            config = {u.key: json.loads(u.value_json) for u in record.run.config.update if u.key != "_wandb"}
    expected = _expected(population)
    assert set(logged) == set(expected)
    for name, values in expected.items():
        assert logged[name].keys() == values.keys(), name
        np.testing.assert_allclose([logged[name][s] for s in values], list(values.values()), rtol=1e-12,
                                   err_msg=name)
    assert config == json.load(open(os.path.join(population, "run.json")))


def test_a_missing_tracker_is_one_line_before_anything_runs(monkeypatch, tmp_path):
    import importlib.util

    real = importlib.util.find_spec
    monkeypatch.setattr(importlib.util, "find_spec", lambda name, *a: None if name == "wandb" else real(name, *a))
    with pytest.raises(SettingError, match=r"--log wandb needs wandb: pip install 'jaxprompt\[track\]'"):
        Trackers(("tensorboard", "wandb"), str(tmp_path))
    assert not os.listdir(tmp_path)


def test_names_of_a_single_prompts_and_a_populations_values():
    from jaxprompt.training.tracking import result_scalars, scalars, written_scalars

    assert scalars({"step": 3, "train_loss": 2.5, "grad_norm": 0.5, "lr": {"embeddings": 0.1, "encoder": 0.0},
                    "tokens_per_s": 100.0}) == {"train/loss": 2.5, "train/grad_norm": 0.5, "train/lr/embeddings": 0.1,
                                                "train/lr/encoder": 0.0, "train/tokens_per_s": 100.0}
    assert scalars({"step": 4, "val_loss": [3.0, 4.0]}) == {"val/loss/member0": 3.0, "val/loss/member1": 4.0,
                                                            "val/loss/mean": 3.5}
    assert written_scalars({"written": 4.5}) == {"val/written_loss": 4.5}
    assert written_scalars({"a: written": 4.5, "b: written": 5.0}) == {"val/written_loss/a": 4.5,
                                                                       "val/written_loss/b": 5.0}
    results = [{"label": "a: written: 'x'", "loss": 5.0, "exact_match": 0.1, "bleu": None},
               {"label": "a: learned: soft P=3", "loss": 4.0, "exact_match": 0.3, "bleu": None}]
    assert result_scalars(results) == {"test/written/a/loss": 5.0, "test/written/a/exact_match": 0.1,
                                       "test/learned/a/loss": 4.0, "test/learned/a/exact_match": 0.3}
    members = [{"results": [{}, {"loss": 3.0, "exact_match": 0.5}]}, {"results": [{}, {"loss": 5.0, "exact_match": 0.1}]}]
    population = result_scalars([{"label": "written: 'x'", "loss": 5.0}, {"label": "learned: soft P=3", "loss": 4.0}],
                                members)
    assert population == {"test/written/loss": 5.0, "test/learned/loss/member0": 3.0,
                          "test/learned/loss/member1": 5.0, "test/learned/loss/mean": 4.0}
