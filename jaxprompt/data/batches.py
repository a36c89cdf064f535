"""Encoded examples -> padded batches: length buckets, collation, deterministic batch orders.

Batch layout (`collate`):
    tokens, slots, mask        [B, T]   right-padded (left-padded for generation)
    target_index, target_weight [B, K]  the target tokens' positions and weights (the loss's)
    task_id                    [B]

Lengths are padded up to `LENGTH_BUCKETS`, so a handful of shapes compile; `Batches` gives batch s
as a function of (seed, s) alone, so a resumed run sees the data an uninterrupted one does.
"""
from __future__ import annotations

from typing import Iterator, Sequence

import numpy as np

from jaxprompt.data.templates import Encoded, TemplateError

LENGTH_BUCKETS = (8, 16, 24, 32, 40, 48, 64, 80, 96, 128, 160, 192, 256, 384, 512, 768, 1024, 1536, 2048)


def bucket(n: int, buckets: Sequence[int] = LENGTH_BUCKETS) -> int:
    for b in buckets:
        if n <= b:
            return b
    raise TemplateError(f"sequence of {n} tokens is longer than the largest bucket {buckets[-1]}")


def collate(examples: Sequence[Encoded], pad_id: int, padding: str = "right", batch_size: int | None = None,
            buckets: Sequence[int] = LENGTH_BUCKETS, shared_len: int = 0, pad_to: int | None = None
            ) -> dict[str, np.ndarray]:
    """Pads to a length bucket (or to `pad_to`); `batch_size` adds all-padding rows (zero loss
    weight) to fill a batch. With a shared head of `shared_len` positions (computed once, from the
    first row), the bucket applies to the rest, which is all that is computed per example; the
    rows must share those positions (refused otherwise: the head of row 0 would stand for every
    row's), and the batch carries their count as the shape of `shared`.

    tokens, mask, slots        [B, T]
    loss_mask                  [B, T]  1.0 on target tokens
    target_index, target_weight [B, K]  positions of target tokens (K a power of two), for a loss
                                        that computes logits only where it needs them
    task_id                    [B]
    shared                     [B, S]  true: the first S positions are every row's shared head
    """
    B = len(examples) if batch_size is None else batch_size
    first = examples[0]
    if shared_len and any(e.tokens[:shared_len] != first.tokens[:shared_len] or e.slots[:shared_len] !=
                          first.slots[:shared_len] or len(e) - e.n_target <= shared_len for e in examples):
        raise ValueError(f"shared_len={shared_len}: these rows do not share their first {shared_len} positions "
                         "before any target (compute it with common_prefix_length over the rows batched together)")
    longest = max(len(e) for e in examples)
    if pad_to is not None and pad_to < longest:
        raise ValueError(f"pad_to={pad_to} is shorter than the longest row ({longest} positions)")
    T = pad_to if pad_to is not None else shared_len + bucket(longest - shared_len, buckets)
    K = 1 << max(0, (max(e.n_target for e in examples) - 1)).bit_length()
    out = {
        "tokens": np.full((B, T), pad_id, np.int32),
        "mask": np.zeros((B, T), bool),
        "slots": np.full((B, T), -1, np.int32),
        "loss_mask": np.zeros((B, T), np.float32),
        "target_index": np.ones((B, K), np.int32),
        "target_weight": np.zeros((B, K), np.float32),
        "task_id": np.zeros((B,), np.int32),
        "shared": np.ones((B, shared_len), bool),
    }
    for b, e in enumerate(examples):
        n = len(e)
        start = 0 if padding == "right" else T - n
        out["tokens"][b, start:start + n] = e.tokens
        out["mask"][b, start:start + n] = True
        out["slots"][b, start:start + n] = e.slots
        if e.n_target:
            out["loss_mask"][b, start + n - e.n_target:start + n] = 1.0
            out["target_index"][b, :e.n_target] = np.arange(start + n - e.n_target, start + n)
            out["target_weight"][b, :e.n_target] = 1.0
        out["task_id"][b] = e.task_id
    return out


class Batches:
    """Deterministic batches: batch s is a function of (seed, s) alone, so a resumed run sees the
    same data as an uninterrupted one. Examples stream through seeded per-epoch permutations.

    Each batch is padded to its own length bucket, so a jitted step compiles once per bucket the
    data reaches (a few); `pad_to=longest(examples)` pads every batch alike: one shape, one compile."""

    def __init__(self, examples: Sequence[Encoded], batch_size: int, pad_id: int, seed: int = 0,
                 buckets: Sequence[int] = LENGTH_BUCKETS, shared_len: int = 0, pad_to: int | None = None):
        if not examples:
            raise TemplateError("the training set is empty")
        self.examples = list(examples)
        self.batch_size = batch_size
        self.pad_id = pad_id
        self.seed = seed
        self.buckets = buckets
        self.shared_len = shared_len
        self.pad_to = pad_to

    def _order(self, epoch: int) -> np.ndarray:
        return np.random.default_rng([self.seed, epoch]).permutation(len(self.examples))

    def indices(self, step: int) -> list[int]:
        n, B = len(self.examples), self.batch_size
        first, last = step * B // n, ((step + 1) * B - 1) // n
        stream = np.concatenate([self._order(epoch) for epoch in range(first, last + 1)])
        offset = step * B - first * n
        return [int(i) for i in stream[offset:offset + B]]

    def __call__(self, step: int) -> dict[str, np.ndarray]:
        return collate([self.examples[i] for i in self.indices(step)], self.pad_id, "right", buckets=self.buckets,
                       shared_len=self.shared_len, pad_to=self.pad_to)

    @property
    def steps_per_epoch(self) -> int:
        return max(1, len(self.examples) // self.batch_size)


def eval_batches(examples: Sequence[Encoded], batch_size: int, pad_id: int, padding: str = "right",
                 buckets: Sequence[int] = LENGTH_BUCKETS, shared_len: int = 0, pad_to: int | None = None
                 ) -> Iterator[tuple[list[int], dict[str, np.ndarray]]]:
    """Fixed-order batches (the last filled with zero-weight rows); yields (example indices, batch)."""
    for start in range(0, len(examples), batch_size):
        chunk = list(examples[start:start + batch_size])
        yield list(range(start, start + len(chunk))), collate(chunk, pad_id, padding, batch_size, buckets, shared_len,
                                                              pad_to)


def longest(examples: Sequence[Encoded], buckets: Sequence[int] = LENGTH_BUCKETS) -> int:
    """The length bucket of the longest example: `pad_to` for batches of one shape."""
    return bucket(max(len(e) for e in examples), buckets)
