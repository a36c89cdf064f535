"""Warm starts: JAX's persistent compilation cache, on by default for every command.

A command's first step waits for XLA to compile the training step, the evaluation's scoring and
generation programs; on a CPU that is most of a short command's time. With the cache, a program
compiled once (same model shapes, settings, jaxprompt and JAX versions: JAX's own key) is read
from disk by the next process instead.

Where: `$JAX_COMPILATION_CACHE_DIR` if set (JAX's own setting wins), else `xla/` in the jaxprompt
cache directory (`$XDG_CACHE_HOME/jaxprompt`, default `~/.cache/jaxprompt`), beside the prompt
cache. `--no-cache` turns it off together with the prompt cache.

The settings go to the environment, which JAX reads when it is first imported (the CLI sets them
before any command imports it); in a process that already imported JAX they are set on its config
for the command's duration and restored after.
"""

from __future__ import annotations

import contextlib
import os
import sys

from jaxprompt.paths import compilation_cache_dir

# Programs that compile faster than this are not worth a disk round trip (JAX's default is 1 s,
# which leaves out most of the evaluation programs of a small model).
MIN_COMPILE_SECONDS = 0.1


def _settings(enabled: bool) -> dict[str, object]:
    if not enabled:
        return {"jax_enable_compilation_cache": False}
    settings = {"jax_enable_compilation_cache": True, "jax_compilation_cache_dir": compilation_cache_dir()}
    if not os.environ.get("JAX_PERSISTENT_CACHE_MIN_COMPILE_TIME_SECS"):
        settings["jax_persistent_cache_min_compile_time_secs"] = MIN_COMPILE_SECONDS
    return settings


@contextlib.contextmanager
def compilation_cache(enabled: bool = True):
    """JAX's persistent compilation cache on (or off) for the commands run inside."""
    settings = _settings(enabled)
    if "jax" not in sys.modules:  # JAX reads these when imported
        previous = {name: os.environ.get(name.upper()) for name in settings}
        os.environ.update({name.upper(): str(value) for name, value in settings.items()})
        try:
            yield
        finally:
            for name, value in previous.items():
                if value is None:
                    os.environ.pop(name.upper(), None)
                else:
                    os.environ[name.upper()] = value
        return
    import jax
    from jax.experimental.compilation_cache import compilation_cache as cc

    previous = {name: getattr(jax.config, name) for name in settings}
    if "jax_compilation_cache_dir" in settings and settings["jax_compilation_cache_dir"] == \
            previous["jax_compilation_cache_dir"]:
        settings.pop("jax_compilation_cache_dir")  # the same cache: keep JAX's opened one
        previous.pop("jax_compilation_cache_dir")
    for name, value in settings.items():
        jax.config.update(name, value)
    if "jax_compilation_cache_dir" in settings or not enabled:
        cc.reset_cache()  # JAX opens its cache once per process: open the one now set (or none)
    try:
        yield
    finally:
        for name, value in previous.items():
            jax.config.update(name, value)
        if "jax_compilation_cache_dir" in previous or not enabled:
            cc.reset_cache()
