"""Host memory after XLA compiles: the compiler's freed working memory handed back to the OS.

Compiling a program on XLA's CPU backend (LLVM) allocates and frees hundreds of MB in many small
blocks. glibc's `free` keeps them in the process's heap; later allocations (a step's temporaries,
the next compile) do not fit the holes they leave, so the resident size grows with every program
compiled and never comes down. At Llama-3.2-1B's shape a `jaxprompt train --quantize int8` run that
compiled its programs (a cold compilation cache) peaked 0.39 GB higher than one that read them
from the cache (2.93 against 2.54 GB; with this module, 2.59 GB cold: `docs/quantization.md`).
`malloc_trim(0)` after each compile returns the free pages of every arena to the OS (glibc 2.8 and
later release pages inside the heap, not only at its top).

`release_after_compiles()` registers that once per process with JAX's monitoring hooks; loading a
model does it (`loading.load_pretrained`), so every command and the Python API get it. Where the C
library has no `malloc_trim` (macOS, musl) it does nothing. Compiles shorter than
`MIN_COMPILE_SECONDS` are left alone: a trim walks every arena's free list (up to 70 ms in a
process holding a 1B model), and after every compile of 0.2 s or more the test suite's
compile-heavy files ran 20% slower (one pair of runs), while the large programs (a 1B step:
seconds) hold the memory.
"""
from __future__ import annotations

import ctypes
import ctypes.util
import functools
import threading

# JAX records this event after each backend compile (a compilation-cache read included).
COMPILE_EVENT = "/jax/core/compile/backend_compile_duration"
MIN_COMPILE_SECONDS = 1.0

_lock = threading.Lock()
_registered: list = []


@functools.cache
def _malloc_trim():
    """glibc's `malloc_trim`, or None where the C library has none."""
    name = ctypes.util.find_library("c")
    try:
        return getattr(ctypes.CDLL(name), "malloc_trim", None) if name else None
    except OSError:
        return None


def release_freed_memory() -> bool:
    """Returns the heap's free pages to the OS now; False where the C library cannot."""
    trim = _malloc_trim()
    if trim is None:
        return False
    trim(0)
    return True


def _after_event(event: str, seconds: float, **_) -> None:
    if event == COMPILE_EVENT and seconds >= MIN_COMPILE_SECONDS:
        release_freed_memory()


def release_after_compiles(enabled: bool = True) -> None:
    """After every compile of at least `MIN_COMPILE_SECONDS`, return the heap's free pages to the OS
    (`enabled=False` stops it). Idempotent; a no-op without glibc's `malloc_trim`."""
    import jax.monitoring

    with _lock:
        if enabled and not _registered and _malloc_trim() is not None:
            jax.monitoring.register_event_duration_secs_listener(_after_event)
            _registered.append(_after_event)
        elif not enabled and _registered:
            jax.monitoring.unregister_event_duration_listener(_registered.pop())
