"""Every `jaxprompt` command end to end in a temp dir, and bad inputs giving clear errors."""

from __future__ import annotations

import io
import json
import os
import subprocess
import sys

import pytest

from jaxprompt.cli import main

FAST = ["--steps", "8", "--prompt-length", "3", "--batch-size", "8", "--eval-examples", "16", "--eval-every", "4",
        "--no-progress", "--lr", "0.05"]


@pytest.fixture(scope="module")
def trained_run(tiny_model_dir, tmp_path_factory):
    run = str(tmp_path_factory.mktemp("runs") / "antonyms-soft")
    assert main(["train", "--model", tiny_model_dir, "--out", run, *FAST]) == 0
    return run


def test_train_writes_the_run_directory(trained_run, capsys):
    files = set(os.listdir(trained_run))
    assert {"run.json", "metrics.jsonl", "curve.png", "results.json", "last", "best"} <= files
    results = json.load(open(os.path.join(trained_run, "results.json")))
    labels = [r["label"] for r in results["results"]]
    assert labels[0].startswith("written: 'antonyms'") and labels[1].startswith("learned: soft")
    for r in results["results"]:
        assert r["n"] == 16 and r["loss"] > 0 and 0 <= r["exact_match"] <= 1
    history = [json.loads(line) for line in open(os.path.join(trained_run, "metrics.jsonl"))]
    assert [h["step"] for h in history if "val_loss" in h] == [0, 4, 8]
    with open(os.path.join(trained_run, "curve.png"), "rb") as f:
        assert f.read(8) == b"\x89PNG\r\n\x1a\n"


def test_eval(trained_run, capsys, tmp_path):
    assert main(["eval", trained_run, "--examples", "8", "--json", str(tmp_path / "m.json")]) == 0
    out = capsys.readouterr().out
    assert "written: 'antonyms'" in out and "learned (best)" in out and "predicted" in out
    assert len(json.load(open(tmp_path / "m.json"))["results"]) == 2


def test_generate_from_text_and_stdin(trained_run, capsys, monkeypatch):
    assert main(["generate", trained_run, "--text", "hot", "--text", "word1=good", "--max-new-tokens", "3"]) == 0
    lines = capsys.readouterr().out.strip().splitlines()
    assert lines[0].startswith("Here are two [prompt] hot and") and lines[1].startswith("Here are two [prompt] good and")
    monkeypatch.setattr(sys, "stdin", io.StringIO("big\n{\"word1\": \"fast\"}\n"))
    assert main(["generate", trained_run, "--max-new-tokens", "2", "--temperature", "1.0", "--top-k", "5"]) == 0
    lines = capsys.readouterr().out.strip().splitlines()
    assert len(lines) == 2 and "fast and" in lines[1]


def test_inspect(trained_run, capsys, tmp_path):
    plot = str(tmp_path / "space.png")
    assert main(["inspect", trained_run, "--top", "3", "--plot", plot]) == 0
    out = capsys.readouterr().out
    assert "nearest vocabulary tokens by cosine" in out and "by l2" in out
    assert out.count("[ 0]") == 2 and "[ 2]" in out and os.path.getsize(plot) > 1000


def test_export_plain_and_peft_refusal(trained_run, capsys, tmp_path):
    assert main(["export", "--to", "plain", trained_run, str(tmp_path / "plain")]) == 0
    assert {"prompt.safetensors", "prompt.json", "prompt.pt"} <= set(os.listdir(tmp_path / "plain"))
    from safetensors.numpy import load_file
    assert load_file(str(tmp_path / "plain" / "prompt.safetensors"))["virtual_tokens"].shape == (3, 32)
    assert main(["export", "--to", "peft", trained_run, str(tmp_path / "peft")]) == 2
    err = capsys.readouterr().err
    assert "prompt sits inside the template" in err and "--to plain" in err


def test_tasks_lists_builtins(capsys):
    assert main(["tasks"]) == 0
    out = capsys.readouterr().out
    assert "antonyms" in out and "paraphrase" in out and "Here are two {prompt} {word1} and" in out


def test_resume_continues_the_run(tiny_model_dir, tmp_path, capsys):
    run = str(tmp_path / "r")
    args = ["train", "--model", tiny_model_dir, "--out", run, "--prompt-length", "2", "--batch-size", "8",
            "--eval-examples", "8", "--eval-every", "3", "--no-progress", "--no-baseline"]
    assert main([*args, "--steps", "3"]) == 0
    assert main([*args, "--steps", "6", "--resume"]) == 0
    history = [json.loads(line) for line in open(os.path.join(run, "metrics.jsonl"))]
    assert [h["step"] for h in history if "val_loss" in h] == [0, 3, 6]
    assert sorted(os.listdir(os.path.join(run, "last"))) == ["3", "6"]


def test_import_peft_adapter_round_trip(tiny_model_dir, tmp_path, capsys):
    """A prepended prompt exports to PEFT and imports back as the identical prompt."""
    import numpy as np
    from jaxprompt.run import load_run

    data = tmp_path / "pairs.jsonl"
    data.write_text("".join(json.dumps({"word1": a, "word2": b}) + "\n" for a, b in
                            [("hot", "cold"), ("up", "down"), ("big", "small"), ("wet", "dry"), ("old", "new")] * 4))
    (tmp_path / "task.toml").write_text('template = "{prompt} {word1} is the opposite of"\ntarget = " {word2}"\n'
                                        f'data = "{data}"\nhard_prompt = "antonym:"\n')
    run = str(tmp_path / "run")
    assert main(["train", "--model", tiny_model_dir, "--task", str(tmp_path / "task.toml"), "--out", run,
                 "--steps", "2", "--prompt-length", "3", "--batch-size", "4", "--no-progress", "--no-baseline"]) == 0
    assert main(["export", "--to", "peft", run, str(tmp_path / "adapter")]) == 0
    assert main(["import", "--from", "peft", str(tmp_path / "adapter"), str(tmp_path / "imported"),
                 "--task", str(tmp_path / "task.toml")]) == 0
    _, original, _ = load_run(run)
    _, imported, info = load_run(str(tmp_path / "imported"))
    np.testing.assert_array_equal(np.asarray(original["embeddings"]), np.asarray(imported["embeddings"]))
    assert main(["eval", str(tmp_path / "imported"), "--split", "train", "--examples", "4"]) == 0


BAD = [
    (["--task", "no-such-task"], "unknown task 'no-such-task'"),
    (["--method", "lora"], "unknown prompt method 'lora'"),
    (["--init", "zeros"], "unknown prompt init 'zeros'"),
    (["--batch-size", "5", "--devices", "1", "--optimizer", "lion"], "unknown optimizer 'lion'"),
]


@pytest.mark.parametrize("extra,message", BAD, ids=[m.split("'")[0].strip() for _, m in BAD])
def test_bad_options_exit_nonzero_with_a_clear_error(tiny_model_dir, tmp_path, capsys, extra, message):
    assert main(["train", "--model", tiny_model_dir, "--out", str(tmp_path / "x"), *FAST, *extra]) == 2
    assert message in capsys.readouterr().err


def _task_file(tmp_path, template, target, rows, name="t.toml"):
    data = tmp_path / "data.jsonl"
    data.write_text("".join(json.dumps(r) + "\n" for r in rows))
    lines = [f"template = {json.dumps(template)}", f"data = {json.dumps(str(data))}"]
    if target is not None:
        lines.append(f"target = {json.dumps(target)}")
    (tmp_path / name).write_text("\n".join(lines) + "\n")
    return str(tmp_path / name)


BAD_TASKS = [
    ("Here are two {word1} and", " {word2}", [{"word1": "a", "word2": "b"}], "has no {prompt} placeholder"),
    ("Here are two {prompt} {word3} and", " {word2}", [{"word1": "a", "word2": "b"}], "no field 'word3'"),
    ("Here are two {prompt} {word1} and", None, [{"word1": "a", "word2": "b"}], "missing 'target'"),
    ("Here are two {prompt} {word1} and", " {word2}", [], "is empty"),
]


@pytest.mark.parametrize("template,target,rows,message", BAD_TASKS, ids=["no-prompt", "unknown-field",
                                                                         "no-target", "empty"])
def test_bad_tasks_exit_nonzero_with_a_clear_error(tiny_model_dir, tmp_path, capsys, template, target, rows, message):
    task = _task_file(tmp_path, template, target, rows)
    assert main(["train", "--model", tiny_model_dir, "--task", task, "--out", str(tmp_path / "x"), *FAST]) == 2
    assert message in capsys.readouterr().err


def test_missing_model_and_not_a_run(tmp_path, capsys):
    assert main(["train", "--model", str(tmp_path), "--out", str(tmp_path / "x"), *FAST]) == 2
    assert "not a model checkpoint" in capsys.readouterr().err
    assert main(["eval", str(tmp_path)]) == 2
    assert "not a jaxprompt run directory" in capsys.readouterr().err


def test_module_entry_point():
    proc = subprocess.run([sys.executable, "-m", "jaxprompt", "tasks"], capture_output=True, text=True, timeout=120)
    assert proc.returncode == 0 and "antonyms" in proc.stdout


def test_sweep_reports_the_best_length(tiny_model_dir, tmp_path, capsys):
    assert main(["sweep", "--model", tiny_model_dir, "--lengths", "1,3", "--trials", "2", "--steps", "2",
                 "--batch-size", "8", "--eval-examples", "8", "--no-progress", "--sweep-dir", str(tmp_path)]) == 0
    out = capsys.readouterr().out
    assert "best prompt length:" in out and out.count("\n") >= 4
    best = int(out.strip().splitlines()[-1].split(":")[1])
    assert best in (1, 3)
