"""Multi-process runs: two `jaxprompt train` processes on one machine (one CPU device each, JAX's
gloo collectives) train the prompt one process trains, with the weights replicated (pmap) or
sharded across the processes (a mesh); write each file once; checkpoint; resume after both are
killed; stop together on a signal to one; end in one line when the other is lost; resume on
another number of processes to the same prompt; and refuse an existing run in both processes, in
one line."""

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


def _env(tmp, devices: int = 1) -> dict:
    return {**os.environ, "JAX_PLATFORMS": "cpu", "PYTHONPATH": str(REPO),
            # the runs compile the same programs: once is enough
            "JAX_COMPILATION_CACHE_DIR": str(tmp / "xla-cache"), "JAX_PERSISTENT_CACHE_MIN_COMPILE_TIME_SECS": "0",
            # `devices` per process, whatever the caller's flags
            "XLA_FLAGS": f"{FAST_COMPILE} --xla_force_host_platform_device_count={devices}"}


def _start(model: str, task: str, out: str, tmp, *extra: str, stderr_apart: bool = False) -> list[subprocess.Popen]:
    """Two processes of one run; their output goes to out.log0 / out.log1 (stderr to out.err0 /
    out.err1 with `stderr_apart`)."""
    port = _free_port()
    procs = []
    for i in range(2):
        log = open(f"{out}.log{i}", "w")
        err = open(f"{out}.err{i}", "w") if stderr_apart else subprocess.STDOUT
        procs.append(subprocess.Popen(
            [sys.executable, "-m", "jaxprompt", "train", "--model", model, "--task", task, "--out", out, *FLAGS,
             "--coordinator", f"127.0.0.1:{port}", "--num-processes", "2", "--process-id", str(i), *extra],
            env=_env(tmp), stdout=log, stderr=err, cwd=str(REPO)))
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


@pytest.fixture(scope="module")
def two_processes(setup, tiny_model_dir):
    """The run of two processes (pmap, one device each), uninterrupted, and what they printed: what a
    run two processes began ends at, bit for bit, however often it stops and on however many
    processes it resumes (a sum of two gradients is the same in either order)."""
    tmp, task, _ = setup
    out = str(tmp / "pmap")
    codes, logs = _finish(_start(tiny_model_dir, task, out, tmp), out)
    assert codes == [0, 0], logs
    return out, logs


def test_two_processes_data_parallel_train_like_one(setup, two_processes):
    """pmap over both processes' devices: every file written once, by process 0; the same metrics,
    results and prompt as one process."""
    _, _, single = setup
    out, logs = two_processes
    assert "learned: soft P=3" in logs[0] and "learned" not in logs[1], logs  # process 0 prints the table
    assert "2 device(s) in 2 processes" in logs[0]
    print("pmap, 2 processes:", _same_run(out, single))


HEARTBEAT = 10  # --heartbeat-timeout: JAX's runtime would abort the survivor after 10 s; the watchdog ends it after 5


def _wait_for_commit(procs, out: str, after: int | None) -> int:
    """The first commit of a step past `after` (bounded wait), once it is there."""
    deadline = time.time() + 300
    while time.time() < deadline and all(p.poll() is None for p in procs):
        if os.path.exists(os.path.join(out, "checkpoints.json")):
            step = Checkpointer(out).latest_step()
            if step is not None and (after is None or step > after):
                return step
        time.sleep(0.02)
    raise AssertionError(f"no commit past {after}: " + "".join(_finish(procs, out)[1]))


def test_a_stopped_run_that_loses_a_process_resumes_on_one_to_the_same_prompt(setup, two_processes, tiny_model_dir):
    """SIGTERM to process 1 stops both processes at one step, committed, each with its line (143).
    Resumed on both, process 1 is killed after a commit: process 0 ends within the heartbeat timeout
    in one line naming it and the step kept (75), no traceback, no C++ abort. Resumed on one process
    (two devices), the run ends at the uninterrupted two-process run's prompt and metrics, bit for bit."""
    tmp, task, _ = setup
    out, apart = str(tmp / "stopped"), {"stderr_apart": True}
    resume = f"(continue with: jaxprompt train --out {out} --resume)"

    procs = _start(tiny_model_dir, task, out, tmp, "--heartbeat-timeout", str(HEARTBEAT), **apart)
    _wait_for_commit(procs, out, None)
    procs[1].send_signal(signal.SIGTERM)
    codes, _ = _finish(procs, out)
    stopped = Checkpointer(out).latest_step()
    errors = [open(f"{out}.err{i}").read() for i in range(2)]
    assert codes == [143, 143] and stopped < STEPS, errors
    assert errors == [(f"jaxprompt train: SIGTERM to process 1: stopped at step {stopped} and committed its "
                       f"checkpoint in {out} {resume}\n"),
                      (f"jaxprompt train: SIGTERM: stopped at step {stopped} and committed its checkpoint in {out} "
                       f"{resume}\n")], errors

    procs = _start(tiny_model_dir, task, out, tmp, "--resume", "--heartbeat-timeout", str(HEARTBEAT), **apart)
    committed = _wait_for_commit(procs, out, stopped)
    procs[1].kill()
    killed = time.monotonic()
    code = procs[0].wait(timeout=3 * HEARTBEAT)
    took = time.monotonic() - killed
    procs[1].wait(timeout=60)
    error = open(f"{out}.err0").read()
    assert code == 75 and took < HEARTBEAT, (code, took, error)
    assert Checkpointer(out).latest_step() == committed < STEPS, "killed too late"
    assert error == (f"jaxprompt train: process 1 of 2 was lost: no word for {HEARTBEAT // 2} s; {out} keeps step "
                     f"{committed}, its last committed checkpoint {resume}\n"), error
    print(f"process 1 killed after step {committed}: process 0 ended {took:.1f} s later")

    resumed = subprocess.run([sys.executable, "-m", "jaxprompt", "train", "--out", out, "--resume", "--no-progress"],
                             env=_env(tmp, devices=2), capture_output=True, text=True, cwd=str(REPO), timeout=400)
    assert resumed.returncode == 0 and "2 device(s)" in resumed.stdout, resumed.stdout + resumed.stderr
    np.testing.assert_array_equal(_last_prompt(out), _last_prompt(two_processes[0]))
    speedless = lambda run: [{k: v for k, v in h.items() if k != "tokens_per_s"} for h in _metrics(run)]
    assert speedless(out) == speedless(two_processes[0])


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
