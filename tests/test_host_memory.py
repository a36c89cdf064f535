"""host_memory: the heap's free pages go back to the OS, and after each compile once a model loads."""
from __future__ import annotations

import ctypes
import ctypes.util

import jax
import jax.numpy as jnp
import pytest

from jaxprompt.models import host_memory, load_pretrained
from jaxprompt.parallel.plan import process_memory

glibc = pytest.mark.skipif(host_memory._malloc_trim() is None, reason="the C library has no malloc_trim")


@glibc
def test_free_pages_inside_the_heap_go_back_to_the_os():
    """200 MB in 1 KiB blocks (below glibc's mmap threshold: in the heap), every block freed but one
    in 64: `free` keeps the pages (the held blocks pin the heap's top), `release_freed_memory` returns
    the free ones. The reference is the kernel's own count of resident pages."""
    libc = ctypes.CDLL(ctypes.util.find_library("c"))
    libc.malloc.restype = ctypes.c_void_p
    libc.free.argtypes = [ctypes.c_void_p]
    libc.memset.argtypes = [ctypes.c_void_p, ctypes.c_int, ctypes.c_size_t]
    blocks = [libc.malloc(1024) for _ in range(200_000)]
    for b in blocks:
        libc.memset(b, 1, 1024)  # touched: resident
    kept = blocks[::64]
    for i, b in enumerate(blocks):
        if i % 64:
            libc.free(b)
    before = process_memory()["rss"]
    assert host_memory.release_freed_memory()
    after = process_memory()["rss"]
    for b in kept:
        libc.free(b)
    assert before - after > 100e6, (before, after)


@pytest.fixture
def trims(monkeypatch):
    """Records each release instead of trimming; the listener unregistered afterwards."""
    calls = []
    monkeypatch.setattr(host_memory, "release_freed_memory", lambda: calls.append(1) or True)
    monkeypatch.setattr(host_memory, "MIN_COMPILE_SECONDS", 0.0)
    yield calls
    host_memory.release_after_compiles(False)


def compile_new_program(seed: float):
    jax.jit(lambda x: jnp.sin(x) * seed + seed).lower(jnp.ones(3)).compile()


@glibc
def test_loading_a_model_releases_after_every_compile_until_disabled(trims, tiny_model_dir):
    host_memory.release_after_compiles(False)
    compile_new_program(1.5)
    assert trims == []  # not registered: nothing loaded yet in this state
    load_pretrained(tiny_model_dir)
    n = len(trims)
    compile_new_program(2.5)
    assert len(trims) == n + 1
    host_memory.release_after_compiles()  # idempotent: still one listener
    compile_new_program(3.5)
    assert len(trims) == n + 2
    host_memory.release_after_compiles(False)
    compile_new_program(4.5)
    assert len(trims) == n + 2


@glibc
def test_short_compiles_are_left_alone(trims, monkeypatch):
    monkeypatch.setattr(host_memory, "MIN_COMPILE_SECONDS", 1e9)
    host_memory.release_after_compiles()
    compile_new_program(5.5)
    assert trims == []
