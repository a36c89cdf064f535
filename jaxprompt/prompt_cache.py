"""A cache of prompt representations: the keys/values of a shared head (virtual tokens and fixed
template text), computed once per (model weights, tokenizer, prompt, head) and reused across
batches, `evaluate` and `generate` calls, and — on disk — across processes.

On disk every computed head is stored under the key of its token/slot sequence, and a lookup
takes the longest stored prefix of the requested head: a prompt assembled from cached pieces
computes only its new positions (the seed's "prompt representation database"). Heads made of text
alone do not depend on the learned prompt, so they are shared between prompts.
"""

from __future__ import annotations

import hashlib
import os
from collections import OrderedDict
from functools import partial

import jax
import jax.numpy as jnp
import ml_dtypes
import numpy as np

from jaxprompt.models import Prefix
from jaxprompt.prompts.apply import shared_head


def weights_id(params) -> str:
    """A cheap fingerprint of frozen weights: shapes, dtypes and a strided sample of every leaf."""
    h = hashlib.sha256()
    for path, leaf in jax.tree_util.tree_flatten_with_path(params)[0]:
        x = np.asarray(jax.device_get(leaf)).reshape(-1)
        sample = x[:: max(1, x.size // 4096)]
        h.update(f"{jax.tree_util.keystr(path)}{leaf.shape}{leaf.dtype}".encode())
        h.update(np.ascontiguousarray(sample).tobytes())
    return h.hexdigest()[:32]


def prompt_id(prompt) -> str:
    h = hashlib.sha256()
    for leaf in jax.tree.leaves(prompt):
        h.update(np.asarray(jax.device_get(leaf)).tobytes())
    return h.hexdigest()[:32]


_shared_head = jax.jit(shared_head, static_argnames=("model", "method"))


class PromptCache:
    def __init__(self, directory: str | None = None, capacity: int = 32):
        self.directory = directory
        self.capacity = capacity
        self._memory: OrderedDict[str, Prefix] = OrderedDict()
        self._ids: dict[int, str] = {}
        self.stats = {"memory_hits": 0, "disk_hits": 0, "computed_positions": 0, "reused_positions": 0}
        if directory:
            os.makedirs(directory, exist_ok=True)

    def _weights_id(self, session) -> str:
        key = id(session.frozen)
        if key not in self._ids:
            self._ids[key] = weights_id(session.frozen) + hashlib.sha256(
                session.tokenizer.backend.to_str().encode()).hexdigest()[:16]
        return self._ids[key]

    def _key(self, base: str, tokens, slots) -> str:
        return hashlib.sha256(f"{base}|{list(tokens)}|{list(slots)}".encode()).hexdigest()

    def head(self, session, method, prompt, tokens: list[int], slots: list[int]) -> Prefix:
        """Keys/values of the head `tokens`/`slots` (batch 1) under `method`/`prompt`."""
        depends_on_prompt = method is not None and (method.kind == "prefix" or any(s >= 0 for s in slots))
        base = "|".join([self._weights_id(session), repr(method) if depends_on_prompt else "text",
                         prompt_id(prompt) if depends_on_prompt else ""])
        key = self._key(base, tokens, slots)
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
            self.stats["computed_positions"] += len(tokens) - done
            self.stats["reused_positions"] += done
            self._store(key, result)
        self._memory[key] = result
        if len(self._memory) > self.capacity:
            self._memory.popitem(last=False)
        return result

    def _path(self, key: str) -> str:
        return os.path.join(self.directory, f"{key}.safetensors")

    def _store(self, key: str, prefix: Prefix) -> None:
        if not self.directory:
            return
        from safetensors.numpy import save_file

        def host(x):
            x = np.asarray(jax.device_get(x))
            return x.astype(ml_dtypes.bfloat16) if x.dtype == jnp.bfloat16 else x

        tmp = self._path(key) + ".tmp"
        save_file({"k": host(prefix.k), "v": host(prefix.v), "mask": host(prefix.mask).astype(np.uint8)}, tmp)
        os.replace(tmp, self._path(key))

    def _load_longest(self, base: str, tokens, slots) -> tuple[Prefix | None, int]:
        if not self.directory:
            return None, 0
        from safetensors.numpy import load_file

        for n in range(len(tokens), 0, -1):
            path = self._path(self._key(base, tokens[:n], slots[:n]))
            if os.path.isfile(path):
                t = load_file(path)
                return Prefix(jnp.asarray(t["k"]), jnp.asarray(t["v"]), jnp.asarray(t["mask"].astype(bool))), n
        return None, 0
