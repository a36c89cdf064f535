"""SIGTERM during training (a scheduler's preemption): the run stops at a step boundary, commits that
step, says so in one line with the command that resumes, exits 143, and resuming reaches the
uninterrupted run's prompt and metrics bit for bit. A second SIGTERM while that checkpoint is being
written ends the process at once and leaves the previous commit: resuming still reaches the same
prompt. (Several processes: test_distributed.py; the loop's side in process: test_loop.py.)"""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import textwrap
import time

import jax
import numpy as np
import pytest
from conftest import REPO

from jaxprompt.cli.main import main
from jaxprompt.runs.checkpoint import Checkpointer

STEPS, EVERY, SIGNAL_AFTER = 16, 8, 9  # the signal once step 9 is recorded: the stop falls between validations
FLAGS = ["--steps", str(STEPS), "--eval-every", str(EVERY), "--log-every", "1", "--prompt-length", "3",
         "--batch-size", "8", "--eval-examples", "8", "--no-progress", "--no-baseline"]

pytestmark = pytest.mark.slow


@pytest.fixture(scope="module")
def uninterrupted(tiny_model_dir, tmp_path_factory):
    run = str(tmp_path_factory.mktemp("preemption") / "uninterrupted")
    assert main(["train", "--model", tiny_model_dir, "--out", run, *FLAGS]) == 0
    return run


def _train(args: list[str], script: str = "") -> subprocess.Popen:
    """`jaxprompt train` in a process of its own (after `script`, Python run first in it)."""
    code = f"import sys\n{script}\nfrom jaxprompt.cli.main import main\nsys.exit(main())"
    return subprocess.Popen([sys.executable, "-c", code, "train", *args], stdout=subprocess.PIPE,
                            stderr=subprocess.PIPE, text=True, cwd=str(REPO),
                            env={**os.environ, "PYTHONPATH": str(REPO)})


def _signal_after_step(proc: subprocess.Popen, run: str, step: int) -> None:
    """SIGTERM once metrics.jsonl records `step` (bounded wait)."""
    deadline = time.time() + 300
    while _recorded(run) < step and time.time() < deadline and proc.poll() is None:
        time.sleep(0.02)
    assert proc.poll() is None, proc.communicate()
    proc.send_signal(signal.SIGTERM)


def _recorded(run: str) -> int:
    """The last training step metrics.jsonl records (its last line may be half-written)."""
    try:
        lines = open(os.path.join(run, "metrics.jsonl")).read().splitlines()
    except FileNotFoundError:
        return 0
    steps = [0]
    for line in lines:
        try:
            entry = json.loads(line)
        except ValueError:
            continue
        if "train_loss" in entry:
            steps.append(entry["step"])
    return max(steps)


def _prompt(run: str) -> np.ndarray:
    prompt = Checkpointer(run).restore_prompt("last")
    return np.concatenate([np.ravel(np.asarray(x)) for x in jax.tree.leaves(prompt)])


def _entries(run: str) -> list[dict]:
    """metrics.jsonl without its wall-clock speeds (not part of what a run computes)."""
    return [{k: v for k, v in json.loads(line).items() if k != "tokens_per_s"}
            for line in open(os.path.join(run, "metrics.jsonl"))]


def _resumes_to(run: str, uninterrupted: str) -> None:
    assert main(["train", "--out", run, "--resume", "--no-progress"]) == 0
    np.testing.assert_array_equal(_prompt(run), _prompt(uninterrupted))
    assert _entries(run) == _entries(uninterrupted)


def test_sigterm_commits_the_step_it_stops_at_and_resumes_exactly(tiny_model_dir, uninterrupted, tmp_path):
    run = str(tmp_path / "run")
    proc = _train(["--model", tiny_model_dir, "--out", run, *FLAGS])
    _signal_after_step(proc, run, SIGNAL_AFTER)
    _, err = proc.communicate(timeout=120)
    record = json.load(open(os.path.join(run, "checkpoints.json")))
    stopped = record["last"][-1]
    assert proc.returncode == 143, err
    assert SIGNAL_AFTER < stopped < STEPS and stopped % EVERY, f"stopped at {stopped}: signal too late"
    assert err.splitlines() == [(f"jaxprompt train: SIGTERM: stopped at step {stopped} and committed its checkpoint "
                                 f"in {run} (continue with: jaxprompt train --out {run} --resume)")], err
    assert record["best"] == EVERY  # the best stays the best validated step
    assert [e["step"] for e in _entries(run) if "train_loss" in e] == list(range(1, stopped + 1))
    _resumes_to(run, uninterrupted)


def test_a_second_sigterm_while_saving_keeps_the_previous_commit(tiny_model_dir, uninterrupted, tmp_path):
    """The second signal arrives inside the save of the step the first one stopped at (after its
    files are written, before the commit): the process ends at once, in one line, with the
    previous commit in place; resuming removes the uncommitted save and ends as if never stopped."""
    run = str(tmp_path / "run")
    second_signal_inside_the_save = textwrap.dedent(f"""
        import os, signal, threading
        import orbax.checkpoint as ocp
        save = ocp.Checkpointer.save
        def saving(self, path, *args, **kwargs):
            save(self, path, *args, **kwargs)
            if int(os.path.basename(str(path))) % {EVERY}:  # the stop's save, not a validation's
                os.kill(os.getpid(), signal.SIGTERM)
                threading.Event().wait(60)  # the watcher ends the process meanwhile
        ocp.Checkpointer.save = saving
    """)
    proc = _train(["--model", tiny_model_dir, "--out", run, *FLAGS], second_signal_inside_the_save)
    _signal_after_step(proc, run, SIGNAL_AFTER)
    _, err = proc.communicate(timeout=120)
    assert proc.returncode == 143, err
    assert json.load(open(os.path.join(run, "checkpoints.json"))) == {"last": [EVERY], "best": EVERY}
    uncommitted = [name for name in os.listdir(os.path.join(run, "last")) if int(name) != EVERY]
    assert len(uncommitted) == 1, uncommitted  # written, never committed
    assert err.splitlines() == [(f"jaxprompt train: terminated again, before the step it was stopping at was saved; "
                                 f"{run} keeps step {EVERY}, its last committed checkpoint (continue with: jaxprompt "
                                 f"train --out {run} --resume)")], err
    _resumes_to(run, uninterrupted)
    assert not os.path.exists(os.path.join(run, "last", uncommitted[0]))  # removed before training went on
