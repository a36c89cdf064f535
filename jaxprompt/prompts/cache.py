"""A cache of prompt representations: the keys/values of a shared head (virtual tokens and fixed
template text), computed once per (model weights, tokenizer, prompt, head) and reused across
batches, `evaluate` and `generate` calls, and — on disk — across processes.

On disk every computed head is stored under the key of its token/slot sequence, and a lookup
takes the longest stored prefix of the requested head: a prompt assembled from cached pieces
computes only its new positions (a database of prompt representations). Heads made of text
alone do not depend on the learned prompt, so they are shared between prompts.

A key covers everything a head depends on: every byte of the frozen weights (hashed once per
load, `Session.fingerprint`), the tokenizer, the source of the code that computes heads, the
method and every byte of the prompt. Each entry carries a checksum of its tensors; an entry that
fails it (a flipped bit, a truncated file) is deleted and recomputed, never served.
"""

from __future__ import annotations

import functools
import hashlib
import os
import sys
import threading
from collections import OrderedDict

import jax
import jax.numpy as jnp
import ml_dtypes
import numpy as np

from jaxprompt.data.templates import TemplateError
from jaxprompt.files import atomic_write
from jaxprompt.models import Prefix
from jaxprompt.parallel.distributed import host
from jaxprompt.prompts.forward import shared_head


@functools.cache
def code_id() -> str:
    """A hash of the source that computes heads (models, prompt methods, precision): cached heads
    from another version of that code are never served."""
    root = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
    sources = [os.path.join(root, "precision.py")]
    for sub in ("models", "prompts"):  # with their subpackages (models/layers/)
        for dirpath, dirnames, names in os.walk(os.path.join(root, sub)):
            dirnames.sort()
            sources += [os.path.join(dirpath, n) for n in sorted(names) if n.endswith(".py")]
    h = hashlib.sha256()
    for path in sources:
        with open(path, "rb") as f:
            h.update(os.path.relpath(path, root).encode() + f.read())
    return h.hexdigest()[:16]


def prompt_id(prompt) -> str:
    """A hash of every value of a prompt (an inference form computed from weights spread over
    processes may itself be spread: `host` gathers it, collectively)."""
    h = hashlib.sha256()
    for path, x in jax.tree_util.tree_flatten_with_path(host(prompt))[0]:
        h.update(f"{jax.tree_util.keystr(path)}{x.shape}{x.dtype}".encode())
        h.update(np.ascontiguousarray(x).tobytes())
    return h.hexdigest()[:32]


def _checksum(arrays: dict[str, np.ndarray]) -> str:
    h = hashlib.sha256()
    for name in sorted(arrays):
        x = np.ascontiguousarray(arrays[name])
        h.update(f"{name}{x.shape}{x.dtype}".encode())
        h.update(x.reshape(-1).view(np.uint8))
    return h.hexdigest()


_shared_head = jax.jit(shared_head, static_argnames=("model", "method"))


class PromptCache:
    """Heads in memory (the `capacity` most recently used; a server sets it from --max-resident)
    and on disk. Thread-safe: a server's loader and its decode loop share one."""

    def __init__(self, directory: str | None = None, capacity: int = 32):
        self.directory = directory
        self.capacity = capacity
        self._memory: OrderedDict[str, Prefix] = OrderedDict()
        self._lock = threading.Lock()
        self.stats = {"memory_hits": 0, "disk_hits": 0, "computed_heads": 0, "computed_positions": 0,
                      "reused_positions": 0, "corrupt_entries": 0}
        self._warned = False

    def _key(self, base: str, tokens, slots) -> str:
        return hashlib.sha256(f"{base}|{list(tokens)}|{list(slots)}".encode()).hexdigest()

    def head(self, session, method, prompt, tokens: list[int], slots: list[int]) -> Prefix:
        """Keys/values of the head `tokens`/`slots` (batch 1) under `method`/`prompt`, in the method's
        inference form (what evaluation and generation use)."""
        if method is not None:
            method, prompt = method.inference_prompt(prompt, session.model, session.frozen)
        prefix_positions = 0 if method is None else method.prefix_positions
        if prefix_positions + len(tokens) > session.config.max_positions:
            raise TemplateError(f"a head of {len(tokens)} tokens + {prefix_positions} prefix positions needs "
                                f"{len(tokens) + prefix_positions} positions; the model has "
                                f"{session.config.max_positions}")
        # prefix and adaption prompts reach every position; embedding prompts only through their slots
        depends_on_prompt = method is not None and (not method.takes_positions or any(s >= 0 for s in slots))
        base = "|".join([session.fingerprint(), code_id(), repr(method) if depends_on_prompt else "text",
                         prompt_id(prompt) if depends_on_prompt else ""])
        key = self._key(base, tokens, slots)
        with self._lock:
            if key in self._memory:
                self._memory.move_to_end(key)
                self.stats["memory_hits"] += 1
                return self._memory[key]
        prefix, done = self._load_longest(base, tokens, slots)
        if done == len(tokens):
            self.stats["disk_hits"] += 1
            result = prefix
        else:
            head = {"tokens": jnp.asarray([tokens], jnp.int32), "slots": jnp.asarray([slots], jnp.int32),
                    "task_id": jnp.zeros((1,), jnp.int32)}
            result = _shared_head(session.model, session.frozen, method, prompt, head, 0, prefix)
            self.stats["computed_heads"] += 1
            self.stats["computed_positions"] += len(tokens) - done
            self.stats["reused_positions"] += done
            self._store(key, result)
        with self._lock:
            self._memory[key] = result
            while len(self._memory) > self.capacity:
                self._memory.popitem(last=False)
        return result

    # ---- disk ------------------------------------------------------------------------------------

    def _path(self, key: str) -> str:
        return os.path.join(self.directory, f"{key}.safetensors")

    def _warn(self, e: OSError) -> None:
        """A cache that cannot be written costs time, never a run: say so once."""
        if not self._warned:
            print(f"jaxprompt: prompt cache {self.directory} is not writable ({e.strerror or e}); "
                  "continuing without it", file=sys.stderr)
            self._warned = True

    def _store(self, key: str, prefix: Prefix) -> None:
        if not self.directory:
            return
        from safetensors.numpy import save_file

        def host(x):
            x = np.asarray(jax.device_get(x))
            return x.astype(ml_dtypes.bfloat16) if x.dtype == jnp.bfloat16 else x

        arrays = {"k": host(prefix.k), "v": host(prefix.v), "mask": host(prefix.mask).astype(np.uint8)}
        try:
            os.makedirs(self.directory, exist_ok=True)
            atomic_write(self._path(key), lambda tmp: save_file(arrays, tmp, metadata={"sha256": _checksum(arrays)}))
        except OSError as e:
            self._warn(e)

    def _read(self, path: str) -> Prefix | None:
        """An entry whose checksum holds, else None (the bad file is removed)."""
        from safetensors import safe_open

        try:
            with safe_open(path, "np") as f:
                expected = (f.metadata() or {}).get("sha256")
                arrays = {name: f.get_tensor(name) for name in ("k", "v", "mask")}
            if expected != _checksum(arrays):
                raise ValueError("checksum mismatch")
        except Exception:  # safetensors raises its own types for a damaged header
            self.stats["corrupt_entries"] += 1
            try:
                os.remove(path)
            except OSError:
                pass
            return None
        return Prefix(jnp.asarray(arrays["k"]), jnp.asarray(arrays["v"]), jnp.asarray(arrays["mask"].astype(bool)))

    def _load_longest(self, base: str, tokens, slots) -> tuple[Prefix | None, int]:
        if not self.directory or not os.path.isdir(self.directory):
            return None, 0
        for n in range(len(tokens), 0, -1):
            path = self._path(self._key(base, tokens[:n], slots[:n]))
            if os.path.isfile(path):
                prefix = self._read(path)
                if prefix is not None:
                    return prefix, n
        return None, 0
