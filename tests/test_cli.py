"""Every `jaxprompt` command end to end; every bad input one line (exit 2) that leaves a run as it was,
and nothing after it; Ctrl-C one line (exit 130) that keeps the last checkpoint, or during the steps
commits the step it stops at; --help states every flag's default and range."""

from __future__ import annotations

import argparse
import io
import json
import os
import re
import shutil
import signal
import subprocess
import sys
import time

import jax
import numpy as np
import pytest
from conftest import ANTONYM_PAIRS, FAST_RUN, snapshot, write_task

from jaxprompt.cli.eval import EvalOptions
from jaxprompt.cli.export import ExportOptions, ImportOptions
from jaxprompt.cli.generate import GenerateOptions
from jaxprompt.cli.inspect import InspectOptions
from jaxprompt.cli.lm_eval import LmEvalOptions
from jaxprompt.cli.main import build_parser, main
from jaxprompt.cli.plan import PlanOptions
from jaxprompt.cli.sweep import SweepOptions
from jaxprompt.cli.trained import LoadOptions
from jaxprompt.config import RunOptions, TrainConfig
from jaxprompt.inference.sampling import Sampling
from jaxprompt.serving.options import ServeOptions
from jaxprompt.settings import SettingError

_SETTINGS = (TrainConfig, RunOptions, LoadOptions, EvalOptions, GenerateOptions, Sampling, InspectOptions,
             ExportOptions, ImportOptions, SweepOptions, PlanOptions, ServeOptions, LmEvalOptions)

FAST = FAST_RUN  # the settings of conftest's trained_run
PAIRS = [{"word1": a, "word2": b} for a, b in ANTONYM_PAIRS]


def test_train_writes_the_run_directory(trained_run):
    files = set(os.listdir(trained_run))
    assert {"run.json", "checkpoints.json", "metrics.jsonl", "curve.png", "results.json", "last", "best"} <= files
    results = json.load(open(os.path.join(trained_run, "results.json")))
    assert [r["label"] for r in results["results"]] == ["written: 'antonyms'", "learned: soft P=3 (best)"]
    assert all(r["n"] == 8 for r in results["results"])
    history = [json.loads(line) for line in open(os.path.join(trained_run, "metrics.jsonl"))]
    assert [h["step"] for h in history if "val_loss" in h] == [0, 2, 4]
    assert json.load(open(os.path.join(trained_run, "run.json")))["config"]["optimizer"]["lr"] == 0.05
    with open(os.path.join(trained_run, "curve.png"), "rb") as f:
        assert f.read(8) == b"\x89PNG\r\n\x1a\n"


def test_eval_reports_what_train_reported(trained_run, capsys, tmp_path):
    assert main(["eval", trained_run, "--examples", "8", "--json", str(tmp_path / "m.json")]) == 0
    out = capsys.readouterr().out
    assert "written: 'antonyms'" in out and "learned: soft P=3 (best)" in out and "predicted" in out
    evaluated = json.load(open(tmp_path / "m.json"))["results"]
    trained = json.load(open(os.path.join(trained_run, "results.json")))["results"]
    assert [r["loss"] for r in evaluated] == pytest.approx([r["loss"] for r in trained], rel=1e-6)


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


def test_module_entry_point():
    proc = subprocess.run([sys.executable, "-m", "jaxprompt", "tasks"], capture_output=True, text=True, timeout=120)
    assert proc.returncode == 0 and "antonyms" in proc.stdout


# the settings each command is built from (cli.build_parser)
COMMAND_SETTINGS = {"train": (TrainConfig, RunOptions), "eval": (LoadOptions, EvalOptions),
                    "generate": (LoadOptions, Sampling, GenerateOptions), "inspect": (LoadOptions, InspectOptions),
                    "export": (LoadOptions, ExportOptions), "import": (ImportOptions,),
                    "sweep": (TrainConfig, RunOptions, SweepOptions), "plan": (TrainConfig, PlanOptions), "tasks": (),
                    "serve": (ServeOptions,), "lm-eval": (LoadOptions, LmEvalOptions)}
POSITIONALS = {"eval": ["RUN"], "generate": ["RUN"], "inspect": ["RUN"], "export": ["RUN", "OUT"],
               "import": ["ADAPTER", "OUT"], "lm-eval": ["RUN"]}


def _settings_of(sub, argv) -> dict:
    """Every settings object a command builds from `argv` (what it would run with)."""
    from jaxprompt.cli.base import settings

    args = sub.parse_args(argv)
    return {cls.__name__: settings(args, cls) for cls in COMMAND_SETTINGS[sub.prog.split()[-1]]}


def _refusal(sub, argv) -> str | None:
    """Why the command refuses `argv` before running (its one line), or None."""
    try:
        _settings_of(sub, argv)
    except SystemExit as e:
        assert e.code == 2
        return "usage"
    except SettingError as e:
        return str(e)
    return None


def test_every_flag_states_a_true_default_and_its_allowed_values(capsys):
    """What each flag's help says holds: giving the stated default changes nothing the command would
    run with; an integer bound is accepted and the next integer beyond it refused; a switch has its
    --no- form."""
    from jaxprompt.settings import leaves

    described = {"--" + flat.replace("_", "-") for cls in _SETTINGS for _, flat, f, *_ in leaves(cls)
                 if f.metadata.get("shown_default")}  # a default stated in words, e.g. "the task's"
    parser = build_parser()
    commands = next(a for a in parser._actions if a.dest == "command").choices
    checked = {"defaults": 0, "bounds": 0}
    for name, sub in commands.items():
        base = POSITIONALS.get(name, [])
        plain = _settings_of(sub, base)
        for action in sub._actions:
            if action.dest in ("help", "fn") or not action.option_strings:
                continue
            flag, text = action.option_strings[0], action.help.replace("%%", "%")
            where = text.rfind("(default: ")
            assert where > 0 and text.endswith(")"), (name, flag)
            default, _, allowed = text[where + len("(default: "):-1].partition("; ")
            if isinstance(action, argparse.BooleanOptionalAction):
                assert default in ("true", "false") and f"--no-{flag[2:]}" in action.option_strings, (name, flag)
                given = flag if default == "true" else f"--no-{flag[2:]}"
                assert _settings_of(sub, [*base, given]) == plain, (name, flag)
                checked["defaults"] += 1
            elif flag not in described and not isinstance(action, argparse._AppendAction) \
                    and not (default == "none" and not allowed.endswith("(or none)")):  # an empty list
                assert _settings_of(sub, [*base, flag, default]) == plain, (name, flag, default)
                checked["defaults"] += 1
            allowed = allowed.removesuffix(" (or none)")
            bound = re.fullmatch(r"(?:an integer|integers,) (?:each )?>= (\d+)", allowed)
            if bound:
                low = int(bound.group(1))  # (a rule between settings may refuse the value alone: not the range)
                assert ">=" not in (_refusal(sub, [*base, flag, str(low)]) or ""), (name, flag)
                assert f"{low - 1}: must be {allowed}" in (_refusal(sub, [*base, flag, str(low - 1)]) or ""), \
                    (name, flag)
                checked["bounds"] += 1
    capsys.readouterr()
    assert checked["defaults"] > 60 and checked["bounds"] > 10, checked


def test_multi_task_training_with_per_part_learning_rates_from_the_cli(tiny_model_dir, tmp_path, capsys):
    """`--task a,b`: one prompt per task trained in shared batches, evaluated per task; and
    `--part-lr encoder=0`: the p-tuning encoders stay at their initial values, their inputs train."""
    from jaxprompt.runs.load import load_run

    rows = PAIRS * 2
    first = write_task(tmp_path, rows, name="opposites", hard_prompt="opposites:")
    second = write_task(tmp_path, [{"word1": r["word2"], "word2": r["word1"]} for r in rows], name="reverse",
                        hard_prompt="reversed:")
    run = str(tmp_path / "run")
    assert main(["train", "--model", tiny_model_dir, "--task", f"{first},{second}", "--out", run, *FAST,
                 "--method", "ptuning", "--encoder-hidden", "8", "--part-lr", "encoder=0", "--seed", "3"]) == 0
    labels = [r["label"] for r in json.load(open(os.path.join(run, "results.json")))["results"]]
    assert labels == ["opposites: written: 'opposites:'", "opposites: learned: ptuning P=3 (best)",
                      "reverse: written: 'reversed:'", "reverse: learned: ptuning P=3 (best)"]
    info = json.load(open(os.path.join(run, "run.json")))
    assert info["method"]["name"] == "multitask" and info["method"]["n_tasks"] == 2

    session, trained, _ = load_run(run, cache=False)
    initial = session.method.init(jax.random.key(3), session.model, session.frozen, session.n_virtual)
    jax.tree.map(np.testing.assert_array_equal, trained["encoder"], initial["encoder"])
    for task in range(2):
        assert not np.allclose(trained["inputs"][task], initial["inputs"][task])

    capsys.readouterr()
    assert main(["eval", run, "--split", "train", "--examples", "4", "--no-baseline"]) == 0
    out = capsys.readouterr().out
    assert "opposites: learned: ptuning P=3 (best)" in out and "reverse: learned: ptuning P=3 (best)" in out
    assert main(["generate", run, "--text", "hot"]) == 2
    assert "choose one with --task" in capsys.readouterr().err
    assert main(["generate", run, "--task", "reverse", "--text", "hot", "--max-new-tokens", "2"]) == 0


# ---- bad input: one line, exit 2, nothing touched ---------------------------------------------------

@pytest.fixture(scope="module")
def bad_inputs(trained_run, tiny_model_dir, tmp_path_factory):
    """name -> (argv, what the one line must say); every file they need, built once."""
    d = tmp_path_factory.mktemp("bad")
    fresh = str(d / "fresh-run")
    train = ["train", "--model", tiny_model_dir, "--out", fresh, *FAST]
    stored_model = json.load(open(os.path.join(trained_run, "run.json")))["config"]["model"]
    task_files = {
        "data=123": ('data = 123\n', "task key 'data' 123: must be a string"),
        "template=5": ('template = 5\n', "the template must be a string, got 5"),
        "group_by": ('group_by = ["colour"]\n', "task key 'group_by' names 'colour'"),
        "prompt:0": ('template = "{prompt:0} {word1}"\n', "needs at least 1 virtual token"),
        "split_fractions": ('split_fractions = [0.5]\n', "task key 'split_fractions' 0.5: must be 2 numbers"),
        "max_new_tokens": ('max_new_tokens = 0\n', "task key 'max_new_tokens' 0: must be an integer >= 1"),
    }
    data = d / "pairs.jsonl"
    data.write_text("".join(json.dumps(r) + "\n" for r in PAIRS))
    cases = {}
    for name, (line, message) in task_files.items():
        keys = {"template": '"Here are two {prompt} {word1} and"', "target": '" {word2}"', "data": json.dumps(str(data))}
        key = line.split(" = ")[0]
        text = "".join(f"{k} = {v}\n" for k, v in keys.items() if k != key) + line
        (d / f"{name}.toml").write_text(text)
        cases[f"task {name}"] = (train[:1] + ["--task", str(d / f"{name}.toml")] + train[1:], message)
    (d / "bad.yaml").write_text('template: "{prompt} {word1}\n  target: [')
    cases["task bad YAML"] = (train[:1] + ["--task", str(d / "bad.yaml")] + train[1:], "is not valid YAML")
    for name, content, message in (("ragged", b"word1,word2\nhot,cold\nz\n1,2,3\n", "Error tokenizing data"),
                                   ("latin1", b"word1,word2\nhot,\xe9t\xe9\n", "must be UTF-8")):
        (d / f"{name}.csv").write_bytes(content)
        (d / f"{name}.toml").write_text(f'template = "Here are two {{prompt}} {{word1}} and"\ntarget = " {{word2}}"\n'
                                        f'data = {json.dumps(str(d / f"{name}.csv"))}\n')
        cases[f"{name} csv"] = (train[:1] + ["--task", str(d / f"{name}.toml")] + train[1:], message)

    broken_model = d / "broken-model"
    shutil.copytree(tiny_model_dir, broken_model)
    (broken_model / "config.json").write_text("{\"model_type\": ")
    quantized_model = d / "bitsandbytes-model"  # weights stored quantized by another library
    shutil.copytree(tiny_model_dir, quantized_model)
    hf = json.load(open(quantized_model / "config.json"))
    hf["quantization_config"] = {"quant_method": "bitsandbytes", "load_in_4bit": True}
    (quantized_model / "config.json").write_text(json.dumps(hf))
    (d / "a-file").write_text("x")
    for name, flags, message in [
        ("batch-size 0", ["--batch-size", "0"], "--batch-size 0: must be an integer >= 1"),
        ("batch-size -4", ["--batch-size", "-4"], "--batch-size -4: must be an integer >= 1"),
        ("eval-every 0", ["--eval-every", "0"], "--eval-every 0: must be an integer >= 1"),
        ("devices -1", ["--devices", "-1"], "--devices -1: must be an integer >= 1"),
        ("devices 64", ["--devices", "64"], "--devices 64: only 1 local device(s) are available"),
        ("encoder-hidden 0", ["--encoder-hidden", "0"], "--encoder-hidden 0: must be an integer >= 1"),
        ("epochs nan", ["--epochs", "nan"], "--epochs nan: must be a number > 0"),
        ("steps -5", ["--steps", "-5"], "--steps -5: must be an integer >= 1"),
        ("steps 0", ["--steps", "0"], "--steps 0: must be an integer >= 1"),
        ("tau-end 0", ["--tau-end", "0"], "--tau-end 0.0: must be a number in (0, 1]"),
        ("train-examples 0", ["--train-examples", "0"], "--train-examples 0: must be an integer >= 1"),
        ("train-examples -3", ["--train-examples", "-3"], "--train-examples -3: must be an integer >= 1"),
        ("clip-norm -1", ["--clip-norm", "-1"], "--clip-norm -1.0: must be a number > 0 (or none)"),
        ("lr -0.1", ["--lr", "-0.1"], "--lr -0.1: must be a number >= 0"),
        ("lr nan", ["--lr", "nan"], "--lr nan: must be a number >= 0"),
        ("lr text", ["--lr", "fast"], "argument --lr: 'fast' is not a number >= 0"),
        ("part-lr", ["--part-lr", "encoder"], "argument --part-lr: 'encoder' is not a list of part=rate"),
        ("part-lr part", ["--part-lr", "encoder=0.1"], "--part-lr: unknown prompt part(s) encoder"),
        ("method", ["--method", "lora"], "--method 'lora': must be one of soft, ptuning, prefix, relaxed, pez"),
        ("init", ["--init", "zeros"], "--init 'zeros': must be one of vocab_normal"),
        ("optimizer", ["--optimizer", "lion"], "--optimizer 'lion': must be one of adamw"),
        ("task", ["--task", "no-such-task"], "unknown task 'no-such-task'"),
        ("accumulate", ["--accumulate", "3"], "--batch-size 8 is not divisible by --accumulate 3"),
        ("top-layers", ["--method", "prefix", "--prefix-top-layers", "5"], "the model has 2 layers; use 1..2"),
        ("config.json", ["--model", str(broken_model)], "config.json is not valid JSON"),
        ("quantize", ["--quantize", "int3"], "--quantize 'int3': must be one of none, int8, int4"),
        ("quantize int4 groups", ["--quantize", "int4"],  # the tiny model's 32 inputs
         "--quantize int4 holds weights in groups of 64 inputs; this gpt2 model's attn/c_attn has 32 inputs"),
        ("quantized checkpoint", ["--model", str(quantized_model)],
         "holds weights quantized by bitsandbytes (config.json quantization_config); jaxprompt reads float"),
        ("missing model", ["--model", str(d / "nothing")], "is not a checkpoint directory"),
        ("out is a file", ["--out", str(d / "a-file")], "is a file, not a directory"),
        ("out read-only", ["--out", "/sys/jaxprompt-test-run"], "(/sys/jaxprompt-test-run)"),
        ("existing run", ["--out", trained_run], "already holds a run: pass --resume to continue it, or --overwrite"),
        # the shared run may have been trained by another worker, from its own copy of the tiny model
        ("resume conflict", ["--out", trained_run, "--model", stored_model, "--resume", "--lr", "0.2"],
         "--lr 0.2 differs from the stored 0.05"),
        ("resume nothing", ["--resume"], "nothing to resume in"),
        ("resume overwrite", ["--resume", "--overwrite"], "--resume and --overwrite exclude each other"),
        ("mesh text", ["--mesh", "data=two"],
         "--mesh: mesh 'data=two' is not data=A,model=B or data=A,fsdp=B with positive integers"),
        ("mesh size", ["--mesh", "data=2,model=4"], "--mesh data=2,model=4 needs 8 devices; this run has 1 device(s)"),
        ("coordinator alone", ["--coordinator", "127.0.0.1:1234"], "a multi-process run needs all of --coordinator"),
        ("coordinator port", ["--coordinator", "node0", "--num-processes", "2", "--process-id", "0"],
         "--coordinator 'node0': must be HOST:PORT"),
        ("process-id", ["--coordinator", "node0:1234", "--num-processes", "2", "--process-id", "2"],
         "--process-id 2: must be in 0..1 for --num-processes 2"),
        ("heartbeat-timeout 1", ["--heartbeat-timeout", "1"], "--heartbeat-timeout 1: must be an integer >= 2"),
    ]:
        cases[name] = (train + flags, message)
    plan = ["plan", "--model", tiny_model_dir]
    for name, flags, message in [
        ("mesh devices", ["--devices", "4", "--mesh", "data=2,model=1"],
         "--mesh data=2,model=1 has 2 devices; --devices is 4"),
        ("mesh text", ["--mesh", "model=0"], "--mesh: mesh 'model=0' is not data=A,model=B"),
        ("device-memory", ["--device-memory", "lots"], "--device-memory: bad memory size 'lots'"),
        ("devices 0", ["--devices", "0"], "--devices 0: must be an integer in [1, 1024]"),
        ("batch", ["--devices", "4", "--mesh", "data=4", "--batch-size", "6"],
         "--batch-size 6 is not divisible by the data axis (4) x --accumulate 1"),
        ("fsdp batch", ["--devices", "4", "--mesh", "data=2,fsdp=2", "--batch-size", "6"],
         "--batch-size 6 is not divisible by the devices (4) x --accumulate 1"),
        ("dtype", ["--dtype", "int8"], "--dtype 'int8': must be one of float32, bfloat16, float16"),
        ("target", ["--target", "tpu"], "--target 'tpu': must be one of accelerator, cpu"),
        ("quantize int4 groups", ["--quantize", "int4"], "--quantize int4 holds weights in groups of 64 inputs"),
        ("quantized checkpoint", ["--model", str(quantized_model)], "holds weights quantized by bitsandbytes"),
        ("target cpu devices", ["--target", "cpu", "--devices", "2"],
         "--target cpu plans this machine's CPU as one device; --devices is 2"),
        ("missing model", ["--model", str(d / "nothing")], "is not a checkpoint directory"),
        ("unknown model", ["--model", "no-such-org/no-such-model"],
         "model 'no-such-org/no-such-model' is not a preset, a local checkpoint directory or in the Hugging Face"),
    ]:
        cases[f"plan {name}"] = (plan + flags, message)

    run_json = d / "run-json"
    for name, edit, message in [("missing key", lambda i: i.pop("steps"), "lacks the key 'steps'"),
                                ("extra key", lambda i: i.__setitem__("colour", 1), "has an unknown key 'colour'"),
                                ("config key", lambda i: i["config"]["loop"].pop("eval_every"),
                                 "config.loop lacks the setting 'eval_every'")]:
        copy = run_json / name.replace(" ", "-")
        shutil.copytree(trained_run, copy)
        info = json.load(open(copy / "run.json"))
        edit(info)
        (copy / "run.json").write_text(json.dumps(info))
        cases[f"run.json {name}"] = (["eval", str(copy)], message)
    corrupt = d / "corrupt"
    shutil.copytree(trained_run, corrupt)
    best = json.load(open(corrupt / "checkpoints.json"))["best"]
    for p in (corrupt / "best" / str(best) / "state").rglob("*"):
        if p.is_file():
            p.write_bytes(b"garbage")
    cases["corrupt checkpoint"] = (["eval", str(corrupt)], f"checkpoint best/{best} in")
    truncated = d / "truncated"
    shutil.copytree(trained_run, truncated)
    for p in (truncated / "best" / str(best) / "state").rglob("*"):
        if p.is_file() and p.parent.name == "d":  # the arrays' data, cut short
            p.write_bytes(p.read_bytes()[:100])
    cases["truncated checkpoint"] = (["eval", str(truncated)], f"checkpoint best/{best} in")
    cases["generate corrupt checkpoint"] = (["generate", str(corrupt), "--text", "hot"], f"checkpoint best/{best} in")

    prepend = write_task(d, PAIRS, name="prepend", template="{prompt} {word1} is the opposite of")
    adapters = {}
    for name, config, rows in [("good", {"num_virtual_tokens": 3}, 3), ("no-tokens", {}, 3), ("truncated", {"num_virtual_tokens": 3}, 3)]:
        from safetensors.numpy import save_file

        adapter = d / f"adapter-{name}"
        adapter.mkdir()
        save_file({"prompt_embeddings": np.zeros((rows, 32), np.float32)}, str(adapter / "adapter_model.safetensors"))
        (adapter / "adapter_config.json").write_text(json.dumps({"peft_type": "PROMPT_TUNING",
                                                                 "base_model_name_or_path": tiny_model_dir, **config}))
        adapters[name] = str(adapter)
    weights = d / "adapter-truncated" / "adapter_model.safetensors"
    weights.write_bytes(weights.read_bytes()[:30])
    imp = lambda name, target: ["import", "--from", "peft", adapters[name], target, "--task", prepend]
    cases["import truncated"] = (imp("truncated", str(d / "imported")), "adapter_model.safetensors cannot be read")
    cases["import no num_virtual_tokens"] = (imp("no-tokens", str(d / "imported")),
                                             "num_virtual_tokens must be an integer >= 1, got None")
    cases["import onto a run"] = (imp("good", trained_run), "already holds a run: pass --overwrite to replace it")

    cases.update({
        "generate max-new-tokens -5": (["generate", trained_run, "--text", "hot", "--max-new-tokens", "-5"],
                                       "--max-new-tokens -5: must be an integer >= 1"),
        "generate past positions": (["generate", trained_run, "--text", "hot", "--max-new-tokens", "300"],
                                    "input of 8 tokens + 300 new tokens needs 308 positions; the model has 96"),
        "temperature -1": (["generate", trained_run, "--temperature", "-1"], "--temperature -1.0: must be a number in [0, 2]"),
        "temperature nan": (["generate", trained_run, "--temperature", "nan"], "--temperature nan: must be a number"),
        "top-p 0": (["generate", trained_run, "--top-p", "0"], "--top-p 0.0: must be a number in (0, 1]"),
        "top-k past the vocabulary": (["generate", trained_run, "--text", "hot", "--top-k", "1000000", "--temperature",
                                       "1"], "top-k 1000000 is more than the model's vocabulary of 50257 tokens"),
        "generate bad JSON": (["generate", trained_run, "--text", "{oops"], "input '{oops' is not a JSON object"),
        "inspect top -1": (["inspect", trained_run, "--top", "-1"], "--top -1: must be an integer >= 1"),
        "eval examples 0": (["eval", trained_run, "--examples", "0"], "--examples 0: must be an integer >= 1"),
        "eval quantize": (["eval", trained_run, "--quantize", "int3"],
                          "--quantize 'int3': must be one of run, none, int8, int4"),
        "generate quantize int4 groups": (["generate", trained_run, "--text", "hot", "--quantize", "int4"],
                                          "--quantize int4 holds weights in groups of 64 inputs"),
        "eval json dir": (["eval", trained_run, "--json", str(d)], f"--json {d} is a directory"),
        "eval json full": (["eval", trained_run, "--examples", "2", "--json", "/dev/full"],
                           "No space left on device (/dev/full)"),
        "export to a file": (["export", "--to", "plain", trained_run, str(d / "a-file")], "is a file, not a directory"),
        "not a run": (["eval", str(d)], "is not a jaxprompt run directory"),
        "sweep trial fails": (["sweep", "--model", tiny_model_dir, "--lengths", "200,300", "--sweep-dir",
                               str(d / "sweep"), *FAST], "is longer than the model's 96 positions"),
    })
    return cases


def test_bad_input_is_one_line_and_touches_no_run(bad_inputs, trained_run, capfd):
    """Every case of the table: exit 2, one line saying what it must, the trained run untouched.
    All cases run; the failure names each case that broke."""
    broken = {}
    for case, (argv, message) in bad_inputs.items():
        before = snapshot(trained_run)
        capfd.readouterr()
        try:
            code = main(argv)
        except SystemExit as e:  # argparse's own errors exit from parse_args
            code = e.code
        err = capfd.readouterr().err
        lines = [line for line in err.splitlines() if line.strip()]
        if code != 2 or len(lines) != 1 or "Traceback" in err or message not in lines[0]:
            broken[case] = (code, err[-2000:])
        elif snapshot(trained_run) != before:
            broken[case] = "touched the trained run"
    assert not broken, broken


def test_a_damaged_checkpoint_is_one_short_line_and_nothing_after(bad_inputs):
    """In a process of its own: what Orbax and TensorStore leave behind at exit (abandoned reads,
    their specs) adds nothing after the one line, and the line names the damage in a few words."""
    argv, message = bad_inputs["truncated checkpoint"]
    proc = subprocess.run([sys.executable, "-m", "jaxprompt", *argv], capture_output=True, text=True, timeout=300)
    assert proc.returncode == 2 and len(proc.stderr.splitlines()) == 1, proc.stderr
    line = proc.stderr.strip()
    assert message in line and "its files are damaged or incomplete" in line, line
    assert "tensorstore" not in line.lower() and len(line) - len(argv[-1]) < 250, line  # no spec, no nested paths


def test_adaption_on_an_architecture_without_it_is_one_line(tiny_model_dir, tmp_path, capfd, monkeypatch):
    import dataclasses

    from jaxprompt.models.registry import ARCHITECTURES

    monkeypatch.setitem(ARCHITECTURES, "gpt2", dataclasses.replace(ARCHITECTURES["gpt2"], adaption_prompts=False))
    capfd.readouterr()
    assert main(["train", "--model", tiny_model_dir, "--out", str(tmp_path / "run"), "--method", "adaption",
                 *FAST]) == 2
    lines = [line for line in capfd.readouterr().err.splitlines() if line.strip()]
    assert len(lines) == 1 and "not supported by gpt2 models; families that support them: opt, llama" in lines[0]


# ---- jaxprompt plan -------------------------------------------------------------------------------------

def _row(out: str, label: str) -> str:
    return next(line for line in out.splitlines() if line.startswith(label))


def test_plan_on_the_embedded_model(capsys):
    """One device: the frozen bytes are those of the embedded checkpoint's tensors (read from its
    file's header); the answer on a memory size follows the total."""
    from safetensors import safe_open

    from jaxprompt.parallel.plan import human
    from jaxprompt.paths import DEFAULT_MODEL

    with safe_open(os.path.join(DEFAULT_MODEL, "model.safetensors"), "np") as f:
        params = sum(int(np.prod(f.get_slice(k).get_shape())) for k in f.keys())
    flags = ["plan", "--batch-size", "8", "--prompt-length", "4", "--text-tokens", "16"]
    assert main([*flags, "--device-memory", "1GB"]) == 0
    out = capsys.readouterr().out
    row = _row(out, "data=1,model=1").split()
    assert row[1:3] == human(4 * params).split() and row[-1] == "yes", out
    assert f"--mesh data=1,model=1 ({' '.join(row[9:11])} per device)" in out, out
    assert main([*flags, "--device-memory", "10MB"]) == 0
    out = capsys.readouterr().out
    assert _row(out, "data=1,model=1").split()[-1] == "no"
    assert "no mesh over 1 device(s) fits 10MB per device" in out, out


def test_plan_on_a_preset_over_eight_devices(capsys):
    """Llama-3.1-8B (8,030,261,248 parameters) in bf16 on 8 virtual devices, model=4: a quarter of
    its weights per device, compiled without allocating any."""
    from jaxprompt.parallel.plan import human

    assert main(["plan", "--model", "meta-llama/Llama-3.1-8B", "--devices", "8", "--mesh", "data=2,model=4",
                 "--batch-size", "8", "--dtype", "bfloat16"]) == 0
    out = capsys.readouterr().out
    assert f"frozen weights {human(8_030_261_248 * 2)} in all" in _row(out, "model")
    assert _row(out, "mesh").endswith("8 devices: data=2,model=4")
    assert _row(out, "sent / device / step").endswith("(upper bound: float32 proxy compile)")
    assert _row(out, "frozen weights / device").split()[-2:] == human(8_030_261_248 * 2 / 4).split()
    assert "upper bound" in _row(out, "temporaries / device")


# ---- Ctrl-C ---------------------------------------------------------------------------------------------

def _start(args, **env):
    return subprocess.Popen([sys.executable, "-m", "jaxprompt", *args], stdout=subprocess.PIPE,
                            stderr=subprocess.PIPE, text=True, env={**os.environ, **env})


def test_ctrl_c_while_loading_is_one_line(tiny_model_dir, tmp_path):
    proc = _start(["train", "--model", tiny_model_dir, "--out", str(tmp_path / "run"), *FAST])
    time.sleep(2.0)  # inside imports / loading / compilation
    proc.send_signal(signal.SIGINT)
    out, err = proc.communicate(timeout=120)
    assert proc.returncode == 130, (proc.returncode, err)
    lines = [line for line in err.splitlines() if line.strip()]
    assert len(lines) == 1 and lines[0].startswith("jaxprompt train: interrupted"), err


def test_ctrl_c_while_training_commits_the_step_it_stops_at(tiny_model_dir, tmp_path):
    """Ctrl-C during the steps: the loop stops at the step boundary and commits that step (resuming
    from such a step to the uninterrupted run's prompt: test_preemption.py)."""
    run = tmp_path / "run"
    args = ["--model", tiny_model_dir, "--out", str(run), "--steps", "8", "--prompt-length", "3", "--batch-size", "8",
            "--eval-examples", "8", "--eval-every", "2", "--no-progress", "--no-baseline"]
    proc = _start(["train", *args])
    deadline = time.time() + 300
    while not (run / "checkpoints.json").exists() and time.time() < deadline and proc.poll() is None:
        time.sleep(0.05)
    proc.send_signal(signal.SIGINT)
    _, err = proc.communicate(timeout=120)
    lines = [line for line in err.splitlines() if line.strip()]
    assert proc.returncode == 130 and len(lines) == 1, (proc.returncode, err)
    committed = json.load(open(run / "checkpoints.json"))["last"][-1]
    assert 2 <= committed < 8
    assert lines[0] == (f"jaxprompt train: SIGINT: stopped at step {committed} and committed its checkpoint in {run} "
                        f"(continue with: jaxprompt train --out {run} --resume)"), lines
    assert main(["train", "--out", str(run), "--resume", "--steps", "8", "--no-progress"]) == 0
    history = [json.loads(line) for line in open(run / "metrics.jsonl")]
    assert [h["step"] for h in history if "val_loss" in h] == [0, 2, 4, 6, 8]


@pytest.mark.slow
def test_a_run_trained_quantized_loads_quantized_unless_told(tiny_model_dir, tmp_path, capsys):
    """`train --quantize int8` stores the setting in run.json; eval, generate and export load the
    frozen model quantized by default and unquantized with `--quantize none` (a prompt trained on
    the quantized model runs on the float one); it exports as any run does (this infix template's
    prompt as plain tensors: PEFT would prepend it)."""
    from jaxprompt.models.quantize import quantized_scheme
    from jaxprompt.runs.load import load_run

    run = str(tmp_path / "run")
    assert main(["train", "--model", tiny_model_dir, "--out", run, "--quantize", "int8", *FAST]) == 0
    assert "matmul weights int8" in capsys.readouterr().out
    assert json.load(open(os.path.join(run, "run.json")))["config"]["quantize"] == "int8"
    assert quantized_scheme(load_run(run, cache=False)[0].frozen) == "int8"
    assert quantized_scheme(load_run(run, cache=False, quantize="none")[0].frozen) is None
    for flags in ([], ["--quantize", "none"]):
        assert main(["eval", run, "--examples", "4", "--no-baseline", *flags]) == 0
        assert "learned: soft P=3 (best)" in capsys.readouterr().out
    assert main(["generate", run, "--text", "hot", "--max-new-tokens", "2"]) == 0
    assert main(["export", "--to", "plain", run, str(tmp_path / "plain")]) == 0
    assert os.listdir(tmp_path / "plain")
