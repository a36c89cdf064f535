"""What every prompt method provides.

A method is a frozen (hashable) dataclass of hyper-parameters; the learned state is a separate
pytree ("the prompt") that the method creates (`init`) and reads (`virtual_tokens` or `prefix`).
Embedding methods produce `N` virtual token embeddings that `insert.py` places at the template's
`{prompt}` slots; prefix methods produce per-layer keys/values.

Behaviour that differs between methods is a method of the method, so callers never test types:
`inference_prompt` (the one form every consumer scores, generates and exports), `batch_virtual_tokens`
/ `batch_prefix` (what a batch sees: one prompt, or one per example for multi-task), `per_example`,
`prefix_positions`, `task_view` and `peft_incompatibility`.
"""

from __future__ import annotations

import dataclasses
from typing import ClassVar

import jax
from jaxtyping import Array, Bool, Float, Int

from jaxprompt.data.templates import Template
from jaxprompt.models import Model
from jaxprompt.prompts import init as inits


@dataclasses.dataclass(frozen=True)
class PromptMethod:
    length: int = 20  # virtual tokens per {prompt} slot (or prefix length)
    name: ClassVar[str] = ""
    kind: ClassVar[str] = "embeddings"  # or "prefix"

    def __post_init__(self):
        if self.length < 1:
            raise ValueError(f"prompt length must be at least 1, got {self.length}")

    def init(self, key: jax.Array, model: Model, frozen: dict, n_virtual: int) -> dict:
        """The prompt pytree (fp32). `n_virtual` is the template's total of virtual tokens."""
        raise NotImplementedError

    def virtual_tokens(self, prompt: dict, model: Model, frozen: dict, step) -> Float[Array, "N E"]:
        raise NotImplementedError

    def prefix(self, prompt: dict, model: Model, frozen: dict, step
               ) -> tuple[Float[Array, "L P H K"], Float[Array, "L P H K"], Bool[Array, "L"]]:
        """Keys, values, and which layers use them."""
        raise NotImplementedError

    def inference_prompt(self, prompt: dict, model: Model, frozen: dict) -> tuple["PromptMethod", dict]:
        """The (method, prompt) that evaluation, generation, the prompt cache and export all use: its
        virtual tokens or keys/values no longer depend on the training step (an encoder baked into
        plain embeddings, a relaxed prompt at its final temperature). Traceable, so validation during
        training scores this same form."""
        return self, prompt

    # ---- what a batch sees ---------------------------------------------------------------------

    @property
    def per_example(self) -> bool:
        """Whether examples of one batch see different prompts (then no head is shared)."""
        return False

    @property
    def prefix_positions(self) -> int:
        """Positions the prompt takes before the input's first token (prefix keys/values)."""
        return 0

    def batch_virtual_tokens(self, prompt: dict, model: Model, frozen: dict, step, task_id: Int[Array, "B"]
                             ) -> Float[Array, "N E"] | Float[Array, "B N E"]:
        """The virtual tokens of a batch: shared ([N, E]) or per example ([B, N, E])."""
        return self.virtual_tokens(prompt, model, frozen, step)

    def batch_prefix(self, prompt: dict, model: Model, frozen: dict, step, task_id: Int[Array, "B"]
                     ) -> tuple[Float[Array, "L B P H K"], Float[Array, "L B P H K"], Bool[Array, "L"]]:
        """The prefix keys/values of a batch, with a batch axis of 1 (shared) or B (per example)."""
        k, v, layer_mask = self.prefix(prompt, model, frozen, step)
        return k[:, None], v[:, None], layer_mask

    # ---- tasks and export ------------------------------------------------------------------------

    @property
    def n_tasks(self) -> int:
        return 1

    def task_view(self, prompt: dict, task: int) -> tuple["PromptMethod", dict]:
        """(method, prompt) of one task alone."""
        if task != 0:
            raise IndexError(f"task {task} of a single-task prompt")
        return self, prompt

    def peft_incompatibility(self, template: Template) -> str | None:
        """Why PEFT cannot hold this prompt in this template, or None if it can (prepended virtual tokens)."""
        pieces = template.pieces({f: "" for f in template.fields}, self.length)
        slots = [p for p in pieces if isinstance(p, int)]
        if len(slots) != 1 or not isinstance(pieces[0], int):
            return (f"the prompt sits inside the template {template.text!r}; PEFT prompt tuning can only prepend "
                    "virtual tokens to the whole input")
        return None


@dataclasses.dataclass(frozen=True)
class EmbeddingInit:
    """How to initialise virtual token embeddings (see prompts/init.py)."""

    init_from: str = "vocab_normal"  # vocab_normal | uniform | sampled_vocab | text
    init_scale: float = 0.5  # uniform range
    init_ids: tuple[int, ...] = ()  # token ids of the init text
    # ordinary word tokens sampled_vocab draws from (init.word_token_ids); not part of the method's
    # identity (equality, hash, repr): it only decides where training starts
    sample_pool: tuple[int, ...] = dataclasses.field(default=(), repr=False, compare=False)

    def initializer(self, model: Model, frozen: dict) -> inits.Initializer:
        table = model.embedding_table(frozen)
        if self.init_from == "vocab_normal":
            return inits.vocab_normal(table)
        if self.init_from == "uniform":
            return inits.uniform(self.init_scale)
        if self.init_from == "sampled_vocab":
            return inits.sampled_vocab(table, self.sample_pool)
        if self.init_from == "text":
            return inits.from_token_ids(table, self.init_ids)
        raise ValueError(f"unknown prompt init {self.init_from!r}; use one of {', '.join(inits.INITIALIZERS)}")
