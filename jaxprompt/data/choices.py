"""Choice tasks as arrays: a context (the template with its prompt) and its candidates' ids.

Batch layout (`collate_choices`):
    tokens, slots, mask   [B, T]     the context, right-padded (a shared head of `shared_len` first)
    task_id               [B]
    choice_tokens         [B, K, C]  each candidate's tokens, right-padded
    choice_mask           [B, K, C]
    choice_valid          [B, K]     false for padding candidates (examples with fewer than K)
    gold                  [B]        index of the gold candidate
    weight                [B]        1 for real rows, 0 for padding rows

Scoring them is evaluation/choices.py's; training on them, training/choices.py's.
"""
from __future__ import annotations

import dataclasses
from typing import Sequence

import numpy as np

from jaxprompt.data.batches import LENGTH_BUCKETS, Batches, bucket, collate
from jaxprompt.data.templates import Encoded, TemplateError


@dataclasses.dataclass
class ChoiceExample:
    """One example: the context's ids and each candidate's ids, the gold candidate's index."""

    context: Encoded
    candidates: list[list[int]]
    gold: int
    texts: list[str]


def encode_choices(session, rows: list[dict], hard_prompt: str | None = None) -> list[ChoiceExample]:
    """Rows of a choice task -> contexts (the template with its prompt) and candidate ids. Each
    candidate is tokenised on its own, as a target is (`data.encode`); one that tokenises to
    nothing is refused."""
    contexts = session.encode(rows, hard_prompt=hard_prompt, with_target=False)
    out = []
    for row, context in zip(rows, contexts):
        task = session.all_tasks[int(row.get("task_id", 0))]
        texts = task.candidates(row)
        ids = []
        for text in texts:
            tokens = session.tokenizer.encode(text)
            if not tokens:
                raise TemplateError(f"task {task.name!r}: the candidate {text!r} tokenizes to nothing; "
                                    "candidates need at least one token (e.g. ' yes', not '')")
            ids.append(tokens)
        out.append(ChoiceExample(context, ids, task.gold_index(row), texts))
    prefix = session.method.prefix_positions if hard_prompt is None else 0
    # the last candidate token is read but predicts nothing: a candidate of n tokens needs n - 1 positions
    needed = max((prefix + len(e.context) + max(map(len, e.candidates)) - 1 for e in out), default=0)
    if needed > session.config.max_positions:
        raise TemplateError(f"an input with its longest candidate needs {needed} positions; the model has "
                            f"{session.config.max_positions}")
    return out


def collate_choices(examples: Sequence[ChoiceExample], pad_id: int, batch_size: int | None = None,
                    shared_len: int = 0, buckets: Sequence[int] = LENGTH_BUCKETS) -> dict[str, np.ndarray]:
    """The batch layout of the module docstring; `batch_size` adds zero-weight padding rows."""
    B = len(examples) if batch_size is None else batch_size
    context = collate([e.context for e in examples], pad_id, "right", B, buckets, shared_len)
    K = max(len(e.candidates) for e in examples)
    longest = max(len(c) for e in examples for c in e.candidates)
    C = 1 if longest == 1 else 1 + bucket(longest - 1, buckets)  # 1 + what is read past the context
    out = {k: context[k] for k in ("tokens", "slots", "mask", "task_id")}
    out["choice_tokens"] = np.full((B, K, C), pad_id, np.int32)
    out["choice_mask"] = np.zeros((B, K, C), bool)
    out["choice_valid"] = np.zeros((B, K), bool)
    out["gold"] = np.zeros((B,), np.int32)
    out["weight"] = np.zeros((B,), np.float32)
    out["choice_valid"][len(examples):, 0] = True  # padding rows: one dummy candidate, weight 0
    for b, e in enumerate(examples):
        for k, ids in enumerate(e.candidates):
            out["choice_tokens"][b, k, :len(ids)] = ids
            out["choice_mask"][b, k, :len(ids)] = True
            out["choice_valid"][b, k] = True
        out["gold"][b] = e.gold
        out["weight"][b] = 1.0
    return out


class ChoiceBatches(Batches):
    """`data.Batches` (batch s a function of (seed, s) alone) over choice examples."""

    def __call__(self, step: int) -> dict[str, np.ndarray]:
        return collate_choices([self.examples[i] for i in self.indices(step)], self.pad_id, shared_len=self.shared_len)


def eval_choice_batches(examples: Sequence[ChoiceExample], batch_size: int, pad_id: int, shared_len: int = 0
                        ) -> list[dict[str, np.ndarray]]:
    return [collate_choices(examples[i:i + batch_size], pad_id, batch_size, shared_len)
            for i in range(0, len(examples), batch_size)]


def utf8_length(text: str) -> int:
    return len(text.encode("utf-8"))
