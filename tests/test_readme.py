"""The README's Python code runs as written (in a fresh process, offline, in an empty directory)
and says what the README says it shows."""

from __future__ import annotations

import os
import re
import subprocess
import sys

import pytest
from conftest import REPO


def python_blocks() -> list[str]:
    return re.findall(r"```python\n(.*?)```", (REPO / "README.md").read_text(), flags=re.S)


def readme_printed() -> list[str]:
    """The lines the README shows its Python loop printing: the `text` block right after it."""
    found = re.search(r"```python\n.*?```\n\nprints[^\n]*\n\n```text\n(.*?)```", (REPO / "README.md").read_text(),
                      flags=re.S)
    assert found, "the README shows no printed figures after its Python loop"
    return found.group(1).strip().splitlines()


@pytest.mark.slow
def test_readme_python_runs_as_written(tmp_path):
    blocks = python_blocks()
    assert len(blocks) >= 3
    script = "\n\n".join(blocks)
    env = {**os.environ, "JAXPROMPT_CACHE": str(tmp_path / "cache"), "HF_HUB_OFFLINE": "1"}
    env.pop("XLA_FLAGS", None)  # a newcomer's process: XLA's default code generation
    proc = subprocess.run([sys.executable, "-c", script], cwd=tmp_path, env=env, capture_output=True, text=True,
                          timeout=1200)
    assert proc.returncode == 0, proc.stdout[-2000:] + proc.stderr[-4000:]
    out = proc.stdout
    assert "8030261248" in out
    before = float(re.search(r"test loss before: ([\d.]+)", out).group(1))
    after = float(re.search(r"test loss after \d+ steps: ([\d.]+)", out).group(1))
    mean, std = map(float, re.search(r"5 seeds: test loss ([\d.]+) ± ([\d.]+)", out).groups())
    assert after < before - 1.0 and abs(mean - after) < 0.5 and std > 0, out
    # what the README shows the loop printing is what it prints (to the printed digits, with
    # room for another CPU's float32 rounding)
    shown = readme_printed()
    labels = [line.split(":")[0] for line in shown]
    loop_lines = [line for line in out.splitlines() if line.split(":")[0] in labels]
    assert [line.split(":")[0] for line in loop_lines] == labels, out
    for line, printed in zip(shown, loop_lines):
        figures = [float(x) for x in re.findall(r"\d+\.\d+", line.split(":", 1)[1])]
        got = [float(x) for x in re.findall(r"\d+\.\d+", printed.split(":", 1)[1])]
        assert len(figures) == len(got) and all(abs(a - b) <= 0.005 for a, b in zip(figures, got)), (line, printed)
    assert (tmp_path / "runs" / "ptuning" / "results.json").exists()
