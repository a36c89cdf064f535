"""Warm starts: every command keeps its compiled programs in the jaxprompt cache directory, a second
identical command reads them back instead of compiling, and `--no-cache` keeps nothing.

JAX itself reports what it read (its "Persistent compilation cache hit" log line with
JAX_LOG_COMPILES) and the cache directory shows what it wrote: the reference is JAX's own account,
not jaxprompt's."""

from __future__ import annotations

import os
import re
import subprocess
import sys

import pytest

from jaxprompt.cli.compile_cache import compilation_cache
from jaxprompt.paths import cache_root, compilation_cache_dir

FAST = ["--steps", "2", "--prompt-length", "2", "--batch-size", "4", "--eval-examples", "4", "--eval-every", "2",
        "--no-progress"]
HIT = "Persistent compilation cache hit"


def _jaxprompt(args, xdg, tmp_path):
    """`jaxprompt ARGS` in a fresh process whose only cache setting is XDG_CACHE_HOME (the suite's
    own compilation and prompt caches, set through the environment, are taken out); its stderr,
    where JAX logs every persistent-cache hit and miss."""
    env = {k: v for k, v in os.environ.items() if not k.startswith("JAX_") and k != "JAXPROMPT_CACHE"}
    env.update(XDG_CACHE_HOME=str(xdg), JAX_LOG_COMPILES="1", JAX_EXPLAIN_CACHE_MISSES="1",
               PYTHONPATH=os.pathsep.join([os.getcwd(), env.get("PYTHONPATH", "")]))
    done = subprocess.run([sys.executable, "-m", "jaxprompt", *args], env=env, capture_output=True, text=True,
                          cwd=tmp_path, timeout=900)
    assert done.returncode == 0, done.stderr[-3000:]
    return done.stderr


def _kept(xdg) -> set[str]:
    """The keys of the programs kept in the jaxprompt cache directory under `xdg`."""
    directory = os.path.join(xdg, "jaxprompt", "xla")
    names = os.listdir(directory) if os.path.isdir(directory) else []
    return {n.removesuffix("-cache") for n in names if n.endswith("-cache")}


def _missed(log: str) -> set[str]:
    return set(re.findall(r"PERSISTENT COMPILATION CACHE MISS for '[^']+' with key '([^']+)'", log))


def _hits(log: str) -> list[str]:
    return re.findall(r"Persistent compilation cache hit for '([^']+)'", log)


@pytest.mark.slow
def test_a_second_identical_run_reads_every_program_it_needs(tiny_model_dir, tmp_path):
    xdg = tmp_path / "xdg"
    first = _jaxprompt(["train", "--model", tiny_model_dir, "--out", str(tmp_path / "a"), *FAST], xdg, tmp_path)
    kept = _kept(xdg)
    assert kept and not _hits(first)
    assert kept <= _missed(first)  # what was kept is what this run compiled
    second = _jaxprompt(["train", "--model", tiny_model_dir, "--out", str(tmp_path / "b"), *FAST], xdg, tmp_path)
    assert not _missed(second) & kept  # no kept program compiled again
    # and nothing the first run did not compile: a program kept only now is one whose compile time
    # fell under MIN_COMPILE_SECONDS the first time (on a loaded machine, one can cross it)
    assert _kept(xdg) - kept <= _missed(first)
    assert "jit__fun" in _hits(second)  # the training step among the programs read
    # (programs of the prompt cache's shared heads are not needed again: the heads were kept too)

    # --no-cache: nothing read, nothing kept
    bare = tmp_path / "bare"
    off = _jaxprompt(["generate", str(tmp_path / "b"), "--text", "hot", "--max-new-tokens", "1", "--no-cache"],
                     bare, tmp_path)
    assert not _hits(off) and not _kept(bare) and not os.path.exists(bare / "jaxprompt" / "prompt-cache")


def test_the_cache_lies_in_the_jaxprompt_cache_directory_unless_jax_is_told(monkeypatch, tmp_path):
    monkeypatch.delenv("JAX_COMPILATION_CACHE_DIR", raising=False)
    monkeypatch.setenv("XDG_CACHE_HOME", str(tmp_path))
    assert compilation_cache_dir() == os.path.join(str(tmp_path), "jaxprompt", "xla")
    assert cache_root() == os.path.join(str(tmp_path), "jaxprompt")
    monkeypatch.setenv("JAX_COMPILATION_CACHE_DIR", str(tmp_path / "mine"))
    assert compilation_cache_dir() == str(tmp_path / "mine")


def test_an_in_process_command_leaves_jaxs_settings_as_they_were(tmp_path):
    import jax

    before = (jax.config.jax_enable_compilation_cache, jax.config.jax_compilation_cache_dir)
    with compilation_cache(False):
        assert jax.config.jax_enable_compilation_cache is False
    with compilation_cache(True):
        assert jax.config.jax_enable_compilation_cache is True
        assert jax.config.jax_compilation_cache_dir == compilation_cache_dir()
    assert (jax.config.jax_enable_compilation_cache, jax.config.jax_compilation_cache_dir) == before
