"""Training on choice tasks (`--loss choices`): cross-entropy over the candidates' summed
log-likelihoods, the gold one ranked first (as Lester et al. train rank classification).
"""
from __future__ import annotations

from typing import Sequence

import numpy as np

from jaxprompt.data.choices import ChoiceBatches, collate_choices, encode_choices, eval_choice_batches
from jaxprompt.data.templates import TemplateError
from jaxprompt.evaluation.choices import choice_loss
from jaxprompt.training.population import MemberBatches


class ChoiceMemberBatches(MemberBatches):
    """`population.MemberBatches` over choice examples: every member's batch s in its own order, [B, K, ...]."""

    def collate(self, rows: list) -> dict[str, np.ndarray]:
        return collate_choices(rows, self.pad_id, shared_len=self.shared_len)


# ---- training on a choice task (`--loss choices`) ----------------------------------------------------

def check_loss(loss: str, tasks) -> None:
    """`--loss choices` needs every task to be a choice task (one line naming the first that is not)."""
    plain = [t.name for t in tasks if t.answer != "choice"]
    if loss == "choices" and plain:
        raise TemplateError(f"--loss choices needs choice tasks (answer = \"choice\"); {plain[0]!r} is not one: "
                            "use --loss lm")


def choice_training(session, method, train_rows: list[dict], val_rows: list[dict], batch_size: int, seed: int,
                    member_seeds: Sequence[int] = (), shared_prefix: bool = True):
    """(loss, validation loss, training batches, validation batches) over the candidates of choice
    tasks; the validation loss is the same cross-entropy, with the prompt in its inference form.
    `member_seeds`: a population's batch orders (empty for one prompt)."""
    train, val = encode_choices(session, train_rows), encode_choices(session, val_rows)
    shared = session.shared_len([e.context for e in train + val]) if shared_prefix else 0
    batches = ChoiceMemberBatches(train, batch_size, session.pad_id, member_seeds, shared) if member_seeds \
        else ChoiceBatches(train, batch_size, session.pad_id, seed=seed, shared_len=shared)
    return (choice_loss(session.model, method), choice_loss(session.model, method, inference=True),
            batches, eval_choice_batches(val, batch_size, session.pad_id, shared))
