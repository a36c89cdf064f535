"""Several task prompts served in one batch: a prompt per task, chosen per example by `task_id`."""

from __future__ import annotations

import dataclasses
from typing import ClassVar

import jax
import jax.numpy as jnp

from jaxprompt.models import Model
from jaxprompt.prompts.base import PromptMethod


@dataclasses.dataclass(frozen=True)
class MultiTask(PromptMethod):
    """Wraps a method; its prompt pytree gains a leading task axis."""

    name: ClassVar[str] = "multitask"
    base: PromptMethod | None = None
    n_tasks: int = 1

    def __post_init__(self):
        if self.base is None or self.n_tasks < 1:
            raise ValueError("MultiTask needs a base method and n_tasks >= 1")

    @property
    def kind(self) -> str:  # type: ignore[override]
        return self.base.kind

    def init(self, key, model: Model, frozen: dict, n_virtual: int) -> dict:
        prompts = [self.base.init(k, model, frozen, n_virtual) for k in jax.random.split(key, self.n_tasks)]
        return jax.tree.map(lambda *xs: jnp.stack(xs), *prompts)

    def virtual_tokens(self, prompt, model, frozen, step):
        """All tasks' virtual tokens, [n_tasks, N, E]; select per example with the batch's task ids."""
        return jax.vmap(lambda p: self.base.virtual_tokens(p, model, frozen, step))(prompt)

    def prefix(self, prompt, model, frozen, step):
        """All tasks' keys/values, [n_tasks, L, P, H, K], and the layer mask."""
        k, v, layer_mask = jax.vmap(lambda p: self.base.prefix(p, model, frozen, step))(prompt)
        return k, v, layer_mask[0]

    def task_prompt(self, prompt, task: int) -> dict:
        return jax.tree.map(lambda x: x[task], prompt)
