"""The Python of the README and the guides: every example under examples/ runs as written (in a
fresh process, offline, in an empty directory), uses only the public API (`jaxprompt.__all__`),
and prints what the docs show it printing; every Python block of the docs is part of an example."""

from __future__ import annotations

import ast
import os
import re
import subprocess
import sys

import pytest
from conftest import REPO

import jaxprompt

EXAMPLES = sorted((REPO / "examples").glob("*.py"))
DOCS = [REPO / "README.md", *sorted((REPO / "docs").glob("*.md"))]


def python_blocks(path) -> list[str]:
    return re.findall(r"```python\n(.*?)```", path.read_text(), flags=re.S)


def printed_blocks(path) -> list[tuple[str, list[str]]]:
    """(Python block, the lines the doc says it prints) for every block followed by 'prints' and a text block."""
    found = re.findall(r"```python\n(.*?)```\n\nprints[^\n]*\n\n```text\n(.*?)```", path.read_text(), flags=re.S)
    return [(code, shown.strip().splitlines()) for code, shown in found]


def private_uses(source: str) -> list[str]:
    """What a script reaches beyond `jaxprompt.__all__`: imports of submodules, names not in the API."""
    bad, aliases = [], set()
    for node in ast.walk(ast.parse(source)):
        if isinstance(node, ast.Import):
            for a in node.names:
                if a.name.startswith("jaxprompt."):
                    bad.append(f"import {a.name}")
                elif a.name == "jaxprompt":
                    aliases.add(a.asname or a.name)
        elif isinstance(node, ast.ImportFrom) and (node.module or "").startswith("jaxprompt"):
            if node.module != "jaxprompt":
                bad.append(f"from {node.module} import ...")
            bad += [f"jaxprompt.{a.name}" for a in node.names if a.name not in jaxprompt.__all__]
        elif isinstance(node, ast.Attribute) and isinstance(node.value, ast.Name) and node.value.id in aliases:
            if node.attr not in jaxprompt.__all__:
                bad.append(f"{node.value.id}.{node.attr}")
    return bad


@pytest.mark.parametrize("example", EXAMPLES, ids=lambda p: p.name)
def test_examples_use_only_the_public_api(example):
    assert private_uses(example.read_text()) == []


def test_every_python_block_of_the_docs_is_part_of_an_example():
    sources = [e.read_text() for e in EXAMPLES]
    for doc in DOCS:
        for block in python_blocks(doc):
            assert any(block.strip() in s for s in sources), f"{doc.name}: a Python block in no example:\n{block}"


def _figures(line: str) -> list[float]:
    return [float(x) for x in re.findall(r"-?\d+\.\d+", line.split(":", 1)[1])] if ":" in line else []


@pytest.mark.slow
@pytest.mark.parametrize("example", EXAMPLES, ids=lambda p: p.name)
def test_examples_run_as_written_and_print_what_the_docs_show(example, tmp_path):
    env = {**os.environ, "JAXPROMPT_CACHE": str(tmp_path / "cache"), "HF_HUB_OFFLINE": "1"}
    env.pop("XLA_FLAGS", None)  # a newcomer's process: XLA's default code generation
    proc = subprocess.run([sys.executable, str(example)], cwd=tmp_path, env=env, capture_output=True, text=True,
                          timeout=1200)
    assert proc.returncode == 0, proc.stdout[-2000:] + proc.stderr[-4000:]
    out = proc.stdout.splitlines()
    source = example.read_text()
    for doc in DOCS:  # what a doc shows this example printing is what it prints, to the printed digits
        for code, shown in printed_blocks(doc):
            if code.strip() not in source:
                continue
            labels = [line.split(":")[0] for line in shown]
            got = [line for line in out if line.split(":")[0] in labels]
            assert [line.split(":")[0] for line in got] == labels, (doc.name, out)
            for line, printed in zip(shown, got):
                a, b = _figures(line), _figures(printed)
                assert len(a) == len(b) and all(abs(x - y) <= 0.005 for x, y in zip(a, b)), (doc.name, line, printed)
    if example.name == "train_loop.py":  # the prompt learns: held-out loss falls, five seeds agree
        before = float(re.search(r"test loss before: ([\d.]+)", proc.stdout).group(1))
        after = float(re.search(r"test loss after \d+ steps: ([\d.]+)", proc.stdout).group(1))
        mean, std = map(float, re.search(r"5 seeds: test loss ([\d.]+) ± ([\d.]+)", proc.stdout).groups())
        assert after < before - 1.0 and abs(mean - after) < 0.5 and std > 0, proc.stdout
    if example.name == "models.py":
        assert "8030261248" in proc.stdout  # transformers' own count of Llama-3.1-8B (tests/test_registry.py)
    if example.name == "whole_run.py":
        assert (tmp_path / "runs" / "ptuning" / "results.json").exists()
    if example.name == "research.py":  # PEFT's independent forward pass agrees with jaxprompt's
        gap = float(re.search(r"differ from jaxprompt's by at most ([\d.e+-]+)", proc.stdout).group(1))
        assert gap < 1e-4, proc.stdout
