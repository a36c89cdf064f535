"""What every prompt method provides.

A method is a frozen (hashable) dataclass of hyper-parameters; the learned state is a separate
pytree ("the prompt") that the method creates (`init`) and reads (`virtual_tokens` or `prefix`).
Embedding methods produce `N` virtual token embeddings that `insert.py` places at the template's
`{prompt}` slots; prefix methods produce per-layer keys/values.
"""

from __future__ import annotations

import dataclasses
from typing import ClassVar

import jax
from jaxtyping import Array, Bool, Float

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

    def inference_prompt(self, prompt: dict, model: Model, frozen: dict, step=None) -> tuple["PromptMethod", dict]:
        """An equivalent (method, prompt) for serving, e.g. an encoder baked into plain embeddings."""
        return self, prompt


@dataclasses.dataclass(frozen=True)
class EmbeddingInit:
    """How to initialise virtual token embeddings (see prompts/init.py)."""

    init_from: str = "vocab_normal"  # vocab_normal | uniform | sampled_vocab | text
    init_scale: float = 0.5  # uniform range
    init_ids: tuple[int, ...] = ()  # token ids of the init text

    def initializer(self, model: Model, frozen: dict) -> inits.Initializer:
        table = model.embedding_table(frozen)
        if self.init_from == "vocab_normal":
            return inits.vocab_normal(table)
        if self.init_from == "uniform":
            return inits.uniform(self.init_scale)
        if self.init_from == "sampled_vocab":
            return inits.sampled_vocab(table)
        if self.init_from == "text":
            return inits.from_token_ids(table, self.init_ids)
        raise ValueError(f"unknown prompt init {self.init_from!r}; use one of {', '.join(inits.INITIALIZERS)}")
