"""Several task prompts served in one batch: a prompt per task, chosen per example by `task_id`."""

from __future__ import annotations

import dataclasses
from typing import ClassVar

import jax
import jax.numpy as jnp

from jaxprompt.models import Model
from jaxprompt.prompts.base import PromptMethod
from jaxprompt.settings import SettingError


@dataclasses.dataclass(frozen=True)
class MultiTask(PromptMethod):
    """Wraps a method; its prompt pytree gains a leading task axis. `length` is the base's."""

    name: ClassVar[str] = "multitask"
    length: int = 0  # the base's (set from it)
    base: PromptMethod | None = None
    n_tasks: int = 1  # type: ignore[assignment]  (a field here, a property of single-task methods)

    def __post_init__(self):
        if self.base is None or self.n_tasks < 1:
            raise ValueError("MultiTask needs a base method and n_tasks >= 1")
        if self.base.adapts_layers:  # every layer would need per-example adapters
            raise SettingError(f"multi-task prompts cannot be {self.base.name} prompts: their gated prompts live inside "
                             "the layers, which would need one per example")
        object.__setattr__(self, "length", self.base.length)

    @property
    def takes_positions(self) -> bool:  # type: ignore[override]
        return self.base.takes_positions

    @property
    def makes_prefix(self) -> bool:  # type: ignore[override]
        return self.base.makes_prefix

    @property
    def per_example(self) -> bool:
        return True

    def init(self, key, model: Model, frozen: dict, n_virtual: int) -> dict:
        prompts = [self.base.init(k, model, frozen, n_virtual) for k in jax.random.split(key, self.n_tasks)]
        return jax.tree.map(lambda *xs: jnp.stack(xs), *prompts)

    def virtual_tokens(self, prompt, model, frozen, step):
        """All tasks' virtual tokens, [n_tasks, N, E]."""
        return jax.vmap(lambda p: self.base.virtual_tokens(p, model, frozen, step))(prompt)

    def prefix(self, prompt, model, frozen, step):
        """All tasks' keys/values, [n_tasks, L, P, H, K], and the layer mask."""
        k, v, layer_mask = jax.vmap(lambda p: self.base.prefix(p, model, frozen, step))(prompt)
        return k, v, layer_mask[0]

    def batch_virtual_tokens(self, prompt, model, frozen, step, task_id):
        return self.virtual_tokens(prompt, model, frozen, step)[task_id]  # [B, N, E]

    def batch_prefix(self, prompt, model, frozen, step, task_id):
        k, v, layer_mask = self.prefix(prompt, model, frozen, step)
        return k[task_id].swapaxes(0, 1), v[task_id].swapaxes(0, 1), layer_mask  # [L, B, P, H, K]

    def inference_prompt(self, prompt, model, frozen):
        baked_method, _ = self.base.inference_prompt(self.task_prompt(prompt, 0), model, frozen)
        baked = jax.vmap(lambda p: self.base.inference_prompt(p, model, frozen)[1])(prompt)
        return dataclasses.replace(self, base=baked_method), baked

    def task_prompt(self, prompt, task: int) -> dict:
        return jax.tree.map(lambda x: x[task], prompt)

    def task_view(self, prompt, task: int):
        if not 0 <= task < self.n_tasks:
            raise IndexError(f"task {task} of a {self.n_tasks}-task prompt")
        return self.base, self.task_prompt(prompt, task)

    def peft_incompatibility(self, template) -> str | None:
        return "multi-task prompts have no PEFT equivalent"
