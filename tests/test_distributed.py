"""Multi-process runs: two `jaxprompt train` processes on one machine (one CPU device each, JAX's
gloo collectives) train the prompt one process trains, with the weights replicated (pmap) or
sharded across the processes (a mesh); write each file once; checkpoint; resume after both are
killed; and refuse an existing run in both processes, in one line."""

from __future__ import annotations

import json
import os
import signal
import socket
import subprocess
import sys
import time

import jax
import numpy as np
import pytest
from conftest import ANTONYM_PAIRS, FAST_COMPILE, REPO, write_task

from jaxprompt.cli.main import main
from jaxprompt.parallel.distributed import decided_by_writer, host, process_rows, run_devices
from jaxprompt.runs.checkpoint import Checkpointer
from jaxprompt.runs.load import load_run

STEPS = 12
# plain SGD: its update is linear in the gradient, so two processes differ from one only by float
# reassociation of the gradient sum (Adam's m / sqrt(v) would amplify it on tiny gradients)
FLAGS = ["--prompt-length", "3", "--batch-size", "8", "--steps", str(STEPS), "--eval-every", "2", "--no-baseline",
         "--no-progress", "--optimizer", "sgd", "--lr", "0.5", "--clip-norm", "none"]


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _start(model: str, task: str, out: str, tmp, *extra: str) -> list[subprocess.Popen]:
    """Two processes of one run; their output goes to out.log0 / out.log1."""
    port = _free_port()
    env = {**os.environ, "JAX_PLATFORMS": "cpu", "PYTHONPATH": str(REPO),
           # the three runs compile the same programs: once is enough
           "JAX_COMPILATION_CACHE_DIR": str(tmp / "xla-cache"), "JAX_PERSISTENT_CACHE_MIN_COMPILE_TIME_SECS": "0",
           "XLA_FLAGS": FAST_COMPILE}  # one device per process, whatever the caller's flags
    procs = []
    for i in range(2):
        log = open(f"{out}.log{i}", "w")
        procs.append(subprocess.Popen(
            [sys.executable, "-m", "jaxprompt", "train", "--model", model, "--task", task, "--out", out, *FLAGS,
             "--coordinator", f"127.0.0.1:{port}", "--num-processes", "2", "--process-id", str(i), *extra],
            env=env, stdout=log, stderr=subprocess.STDOUT, cwd=str(REPO)))
    return procs


def _finish(procs, out: str, timeout: float = 400) -> tuple[list[int], list[str]]:
    codes = [p.wait(timeout=timeout) for p in procs]
    return codes, [open(f"{out}.log{i}").read() for i in range(len(procs))]


def _last_prompt(run_dir: str) -> np.ndarray:
    _, prompt, _ = load_run(run_dir, "last", cache=False)
    return np.concatenate([np.ravel(np.asarray(x)) for x in jax.tree.leaves(prompt)])


@pytest.fixture(scope="module")
def setup(tiny_model_dir, tmp_path_factory):
    """The task, and the run of one process (one device): what two processes must reproduce."""
    tmp = tmp_path_factory.mktemp("distributed")
    task = write_task(tmp, [{"word1": a, "word2": b} for a, b in ANTONYM_PAIRS], max_new_tokens=2)
    single = str(tmp / "single")
    assert main(["train", "--model", tiny_model_dir, "--task", task, "--out", single, *FLAGS]) == 0
    return tmp, task, single


def _metrics(run_dir):
    return [json.loads(line) for line in open(os.path.join(run_dir, "metrics.jsonl"))]


def _same_run(run_dir: str, single: str) -> dict:
    """Two processes' run vs one process's: the same metrics lines (each once), results and final prompt."""
    two, one = _metrics(run_dir), _metrics(single)
    assert [(h["step"], sorted(h)) for h in two] == [(h["step"], sorted(h)) for h in one]
    for a, b in zip(two, one):
        for key in ("train_loss", "val_loss"):
            if key in b:
                np.testing.assert_allclose(a[key], b[key], rtol=2e-6, err_msg=f"{key} at step {b['step']}")
    prompt_two, prompt_one = _last_prompt(run_dir), _last_prompt(single)
    np.testing.assert_allclose(prompt_two, prompt_one, rtol=0, atol=5e-6)  # values ~1
    results = [json.load(open(os.path.join(d, "results.json")))["results"] for d in (run_dir, single)]
    np.testing.assert_allclose([r["loss"] for r in results[0]], [r["loss"] for r in results[1]], rtol=2e-6)
    assert sorted(os.listdir(os.path.join(run_dir, "last"))) == sorted(os.listdir(os.path.join(single, "last")))
    return {"max prompt diff": float(np.abs(prompt_two - prompt_one).max()),
            "max loss diff": max(abs(a.get(k, 0) - b.get(k, 0)) for a, b in zip(two, one) for k in ("train_loss",
                                                                                                  "val_loss"))}


def test_two_processes_data_parallel_train_like_one(setup, tiny_model_dir):
    """pmap over both processes' devices: every file written once, by process 0; the same metrics,
    results and prompt as one process."""
    tmp, task, single = setup
    out = str(tmp / "pmap")
    codes, logs = _finish(_start(tiny_model_dir, task, out, tmp), out)
    assert codes == [0, 0], logs
    assert "learned: soft P=3" in logs[0] and "learned" not in logs[1], logs  # process 0 prints the table
    assert "2 device(s) in 2 processes" in logs[0]
    print("pmap, 2 processes:", _same_run(out, single))


def test_two_processes_sharded_weights_killed_and_resumed(setup, tiny_model_dir):
    """The weights sharded across the processes (mesh data=1,model=2): both processes killed after
    a checkpoint, resumed, end as one process's uninterrupted run; evaluation (collective over the
    shards) reports the same numbers."""
    tmp, task, single = setup
    out = str(tmp / "mesh")
    procs = _start(tiny_model_dir, task, out, tmp, "--mesh", "data=1,model=2")
    record = os.path.join(out, "checkpoints.json")
    deadline = time.time() + 400
    while not os.path.exists(record) and time.time() < deadline and all(p.poll() is None for p in procs):
        time.sleep(0.02)
    for p in procs:
        p.send_signal(signal.SIGKILL)
    _, logs = _finish(procs, out)
    assert os.path.exists(record), logs
    committed = Checkpointer(out).latest_step()
    assert committed < STEPS and not os.path.exists(os.path.join(out, "results.json")), "killed too late"
    codes, logs = _finish(_start(tiny_model_dir, task, out, tmp, "--mesh", "data=1,model=2", "--resume"), out)
    assert codes == [0, 0] and f"continuing from step {committed}" in logs[0], logs
    print(f"mesh 1x2 over 2 processes, killed at step {committed} and resumed:",
          _same_run(out, single))


def test_both_processes_refuse_an_existing_run_in_one_line(setup, tiny_model_dir):
    """Process 0 judges the run directory; process 1 raises its decision, the same line."""
    tmp, task, single = setup
    procs = _start(tiny_model_dir, task, single, tmp)
    for p in procs:
        assert p.wait(timeout=300) == 2
    errors = [open(f"{single}.log{i}").read().strip().splitlines()[-1] for i in range(2)]
    assert errors[0] == errors[1] == (f"jaxprompt train: error: {single} already holds a run: pass --resume to "
                                      "continue it, or --overwrite to replace it"), errors


def test_helpers_in_one_process():
    """One process: every device is the run's, a batch is all this process's rows, process 0 decides."""
    assert run_devices() == jax.devices() and run_devices(1) == jax.devices()[:1]
    batch = {"tokens": np.arange(8).reshape(4, 2)}
    np.testing.assert_array_equal(process_rows(batch)["tokens"], batch["tokens"])
    np.testing.assert_array_equal(process_rows(batch, process=1, count=2)["tokens"], batch["tokens"][2:])
    assert decided_by_writer(lambda: "here", shared=True) == "here"
    with pytest.raises(KeyError):
        decided_by_writer(lambda: {}["missing"])
    np.testing.assert_array_equal(host({"x": jax.numpy.ones(3)})["x"], np.ones(3))
