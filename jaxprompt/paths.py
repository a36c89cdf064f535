"""Where jaxprompt finds and keeps things on disk: the embedded model, new runs, and its caches.

- The embedded default model (`tiny-gpt2-wordnet`, pretrained by `scripts/tools/pretrain_tiny.py`):
  package data of an installed wheel (`jaxprompt/embedded/`, copied from the repository's
  `checkpoints/` when the wheel is built), else the repository's `checkpoints/` (a source checkout
  or an editable install).
- New runs: `$JAXPROMPT_HOME` if set, else `checkpoints/` under the current directory; never the
  installed package.
- Caches: `$XDG_CACHE_HOME/jaxprompt` (default `~/.cache/jaxprompt`): compiled programs in `xla/`
  (unless `$JAX_COMPILATION_CACHE_DIR`), prompt heads in `prompt-cache/` (unless `$JAXPROMPT_CACHE`).
"""

from __future__ import annotations

import os
import time

EMBEDDED_MODEL_NAME = "tiny-gpt2-wordnet"
HOME_ENV = "JAXPROMPT_HOME"
PROMPT_CACHE_ENV = "JAXPROMPT_CACHE"

_PACKAGE = os.path.dirname(os.path.abspath(__file__))


def embedded_model() -> str:
    """The embedded model's directory: the wheel's copy, else the source checkout's."""
    packaged = os.path.join(_PACKAGE, "embedded", EMBEDDED_MODEL_NAME)
    if os.path.isdir(packaged):
        return packaged
    return os.path.join(os.path.dirname(_PACKAGE), "checkpoints", EMBEDDED_MODEL_NAME)


DEFAULT_MODEL = embedded_model()


def runs_root() -> str:
    """Where a run without `--out` goes: `$JAXPROMPT_HOME`, else `./checkpoints`."""
    return os.environ.get(HOME_ENV) or os.path.join(os.getcwd(), "checkpoints")


def new_run_dir(name: str) -> str:
    """A new run's default directory, `<runs root>/<name>-<local time>`."""
    return os.path.join(runs_root(), f"{name}-{time.strftime('%Y%m%d-%H%M%S')}")


def cache_root() -> str:
    """The jaxprompt cache directory: `$XDG_CACHE_HOME/jaxprompt`, default `~/.cache/jaxprompt`."""
    home = os.environ.get("XDG_CACHE_HOME") or os.path.join(os.path.expanduser("~"), ".cache")
    return os.path.join(home, "jaxprompt")


def prompt_cache_dir() -> str:
    """Where prompt heads are kept on disk: `$JAXPROMPT_CACHE`, else `prompt-cache/` in the cache directory."""
    return os.environ.get(PROMPT_CACHE_ENV) or os.path.join(cache_root(), "prompt-cache")


def compilation_cache_dir() -> str:
    """Where compiled programs are kept: JAX's own setting, else `xla/` in the cache directory."""
    return os.environ.get("JAX_COMPILATION_CACHE_DIR") or os.path.join(cache_root(), "xla")
